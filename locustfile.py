"""Load test of the prediction API: ``make loadtest`` (or ``locust -f locustfile.py --host URL``).

Simulated users send small PNGs (mostly), now and then a phone-sized JPEG, a batch, and look at
/health and /stats the way a dashboard does. Images come from the test split, so the load is
what the model really serves.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from locust import HttpUser, between, task
from PIL import Image

TEST_DIR = Path(__file__).parent / "data" / "test"


def _images() -> list[bytes]:
    paths = sorted(TEST_DIR.glob("*/*.png"))[:200]
    if not paths:
        raise SystemExit(f"no test images in {TEST_DIR}: run `make data` first")
    return [p.read_bytes() for p in paths]


def _photo() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((2000, 1500), 60).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


IMAGES = _images()
PHOTO = _photo()


class ApiUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task(20)
    def predict_png(self):
        self.client.post(
            "/predict",
            data=random.choice(IMAGES),
            headers={"Content-Type": "image/png"},
            name="/predict (png)",
        )

    @task(2)
    def predict_photo(self):
        self.client.post(
            "/predict",
            data=PHOTO,
            headers={"Content-Type": "image/jpeg"},
            name="/predict (3 MP jpeg)",
        )

    @task(2)
    def predict_batch(self):
        files = [("images", (f"{i}.png", random.choice(IMAGES))) for i in range(8)]
        self.client.post("/predict/batch", files=files, name="/predict/batch (8)")

    @task(1)
    def health(self):
        self.client.get("/health")

    @task(1)
    def stats(self):
        self.client.get("/stats")
