"""``make bench``: /predict throughput of this service against an ordinary implementation.

Both run in this process, one request at a time, through Flask's test client, with the current
model and the same inputs:

- ``imgclf``: the real app (``serve.app``): Pillow's JPEG draft mode decodes a large photo at
  a reduced scale, and the forward pass is one jit-compiled function.
- ``naive``: what tutorials do: decode at full resolution, convert, resize, then
  ``model.predict`` per request.

Inputs: a 12-megapixel (4000 x 3000) phone-style JPEG and a small PNG from the test split.
Writes ``reports/bench-<time>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from datetime import UTC, datetime

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from PIL import Image  # noqa: E402

from imgclf import config, registry  # noqa: E402
from imgclf.files import write_json_atomic  # noqa: E402


def phone_jpeg(width: int = 4000, height: int = 3000, seed: int = 0) -> bytes:
    """A photo-like 12 MP JPEG: smooth gradients plus noise, quality 90 (about 3-5 MB)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-12, 12, (height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def naive_app(models_dir) -> Flask:
    """The ordinary way: full decode, resize, ``model.predict`` per request."""
    from imgclf.model import load_model

    version = registry.current_version(models_dir)
    info = registry.metadata(models_dir, version)
    model = load_model(registry.model_path(models_dir, version))
    size = tuple(info["image_size"])
    mode = "L" if info["color_mode"] == "grayscale" else "RGB"
    app = Flask("naive")

    @app.post("/predict")
    def predict():
        image = Image.open(io.BytesIO(request.get_data())).convert(mode).resize(size[::-1])
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array.reshape(1, *size, -1)
        probabilities = model.predict(array, verbose=0)[0]
        best = int(np.argmax(probabilities))
        return jsonify(label=info["class_names"][best], confidence=float(probabilities[best]))

    return app


def measure(client, payload: bytes, content_type: str, seconds: float, least: int) -> dict:
    for _ in range(3):  # warm-up: compilation, caches
        assert client.post("/predict", data=payload, content_type=content_type).status_code == 200
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < least:
        begin = time.perf_counter()
        response = client.post("/predict", data=payload, content_type=content_type)
        latencies.append(time.perf_counter() - begin)
        assert response.status_code == 200, response.get_data(as_text=True)
    elapsed = time.perf_counter() - started
    latencies_ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "latency_p50_ms": round(float(np.percentile(latencies_ms, 50)), 2),
        "latency_p95_ms": round(float(np.percentile(latencies_ms, 95)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="per implementation/input")
    args = parser.parse_args(argv)
    settings = config.get_settings()
    if registry.current_version(settings.models_dir) is None:
        raise SystemExit("no current model: run `make train` first")
    from serve.app import create_app

    ours = create_app(settings).test_client()
    naive = naive_app(settings.models_dir).test_client()
    small = next(iter(sorted(settings.test_dir.glob("*/*.png"))), None)
    inputs = {"12 MP phone JPEG": (phone_jpeg(), "image/jpeg")}
    if small is not None:
        inputs["small PNG"] = (small.read_bytes(), "image/png")
    results = {}
    for name, (payload, content_type) in inputs.items():
        row = {"bytes": len(payload)}
        for implementation, client in (("imgclf", ours), ("naive", naive)):
            row[implementation] = measure(client, payload, content_type, args.seconds, 5)
        row["speedup"] = round(row["imgclf"]["throughput_rps"] / row["naive"]["throughput_rps"], 1)
        results[name] = row
    record = {
        "created_at": datetime.now(UTC).isoformat(),
        "model_version": registry.current_version(settings.models_dir),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "method": "in-process Flask test client, one request at a time",
        "results": results,
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = write_json_atomic(settings.reports_dir / f"bench-{stamp}.json", record)
    print(f"\n{'input':18s} {'impl':7s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, row in results.items():
        for implementation in ("imgclf", "naive"):
            r = row[implementation]
            print(
                f"{name:18s} {implementation:7s} {r['throughput_rps']:8.1f} "
                f"{r['latency_p50_ms']:8.1f} {r['latency_p95_ms']:8.1f}"
            )
        print(f"{'':18s} speed-up x{row['speedup']}")
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
