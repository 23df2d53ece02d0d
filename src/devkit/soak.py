"""``make soak``: mixed traffic for ``SOAK_MINUTES`` (30) against ``make cluster``'s stack
(PostgreSQL, one API replica with 2 gunicorn workers, the job worker, nginx), sampling every
``SOAK_SAMPLE_S`` (10) the resident memory, open files and threads of each process, the
database's size and the prediction journal's. Nothing may grow without bound: the report
compares the second half's growth per minute with the first half's.

``RETAIN_HOURS`` is 0.1 unless set, so that pruning (every 10 minutes) shows within the run.
Traffic: predictions from three clients, a batch of 8 every second, feedback with the
prediction's token every second, a small labelled upload every 10 s, one retrain a third of the
way in. Writes ``reports/soak-<time>.json`` and prints a table.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from devkit.cluster import Cluster
from imgclf import config
from imgclf.files import write_json_atomic

TOKEN = "soak-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Traffic:
    """The mixed clients, each a thread, counting answers by status."""

    def __init__(self, url: str, test_dir: Path):
        self.url, self.stop = url, threading.Event()
        self.images = [p.read_bytes() for p in sorted(test_dir.glob("*/*.png"))[:64]]
        self.counts: dict[str, int] = {}
        self.tokens: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def count(self, what: str, status: int) -> None:
        with self._lock:
            key = f"{what} {status}"
            self.counts[key] = self.counts.get(key, 0) + 1

    def predict(self) -> None:
        with requests.Session() as session:
            for n in iter(int, 1):
                if self.stop.is_set():
                    return
                image = self.images[n % len(self.images)]
                answer = session.post(f"{self.url}/predict", files={"image": image}, timeout=60)
                self.count("predict", answer.status_code)
                if answer.ok and n % 20 == 0:
                    body = answer.json()
                    self.tokens.append((body["prediction_id"], body["feedback_token"]))

    def every(self, seconds: float, action) -> None:
        n = 0
        while not self.stop.wait(seconds):
            n += 1
            try:
                action(n)
            except requests.RequestException as error:
                self.count(f"{action.__name__} error {type(error).__name__}", 0)

    def batch(self, n: int) -> None:
        files = [
            ("images", (f"{i}.png", self.images[(n + i) % len(self.images)])) for i in range(8)
        ]
        self.count(
            "batch",
            requests.post(f"{self.url}/predict/batch", files=files, timeout=60).status_code,
        )

    def feedback(self, n: int) -> None:
        if self.tokens:
            prediction, token = self.tokens.pop()
            body = {"prediction_id": prediction, "label": "3", "feedback_token": token}
            self.count(
                "feedback",
                requests.post(f"{self.url}/feedback", json=body, timeout=60).status_code,
            )

    def upload(self, n: int) -> None:
        files = {"files": (f"soak-{n}.png", png(n))}
        answer = requests.post(
            f"{self.url}/upload-data", data={"label": "3"}, files=files, headers=AUTH, timeout=60
        )
        self.count("upload", answer.status_code)


def sample(cluster: Cluster, started: float) -> dict:
    import psutil
    import psycopg

    row: dict = {"minute": round((time.monotonic() - started) / 60, 2)}
    for name, process in [("api", cluster.api[0]), ("worker", cluster.worker)]:
        try:
            parent = psutil.Process(process.pid)
            family = [parent, *parent.children(recursive=True)]
            row[f"{name}_rss_mb"] = round(sum(p.memory_info().rss for p in family) / 2**20, 1)
            row[f"{name}_files"] = sum(p.num_fds() for p in family)
            row[f"{name}_threads"] = sum(p.num_threads() for p in family)
        except psutil.Error:
            continue
    dsn = f"host=127.0.0.1 port={cluster.postgres.port} user=postgres dbname=imgclf"
    with psycopg.connect(dsn) as connection:
        size = connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    row["database_mb"] = round(size / 2**20, 2)
    journal = cluster.settings.prediction_journal_dir
    row["journal_kb"] = (
        round(sum(p.stat().st_size for p in journal.glob("*")) / 1024, 1)
        if journal.is_dir()
        else 0.0
    )
    return row


def growth(samples: list[dict], key: str) -> tuple[float, float]:
    """Growth per minute over the first and the second half of the run."""
    values = [(s["minute"], s[key]) for s in samples if key in s]
    half = len(values) // 2
    if half < 2:
        return 0.0, 0.0

    def slope(part):
        minutes, ys = zip(*part, strict=True)
        return float(np.polyfit(minutes, ys, 1)[0])

    return slope(values[:half]), slope(values[half:])


def run(cluster: Cluster, test_dir: Path, minutes: float, every_s: float) -> tuple[list, dict]:
    """The traffic for ``minutes``, sampled every ``every_s``; returns the samples and counts."""
    traffic = Traffic(cluster.url, test_dir)
    threads = [threading.Thread(target=traffic.predict, daemon=True) for _ in range(3)]
    threads += [
        threading.Thread(target=traffic.every, args=(1.0, traffic.batch), daemon=True),
        threading.Thread(target=traffic.every, args=(1.0, traffic.feedback), daemon=True),
        threading.Thread(target=traffic.every, args=(10.0, traffic.upload), daemon=True),
    ]
    for thread in threads:
        thread.start()
    started, retrained, samples = time.monotonic(), False, []
    while time.monotonic() - started < minutes * 60:
        samples.append(sample(cluster, started))
        print(samples[-1], flush=True)
        if not retrained and time.monotonic() - started > minutes * 20:
            job = requests.post(
                f"{cluster.url}/retrain", json={"epochs": 1}, headers=AUTH, timeout=30
            )
            traffic.count("retrain", job.status_code)
            retrained = True
        time.sleep(every_s)
    traffic.stop.set()
    for thread in threads:
        thread.join(timeout=60)
    samples.append(sample(cluster, started))
    return samples, traffic.counts


def report(samples: list[dict], counts: dict, minutes: float, reports: Path) -> Path:
    """Write the JSON record and print the table; returns the record's path."""
    keys = [k for k in samples[-1] if k != "minute"]
    halves = {k: growth(samples, k) for k in keys}
    record = {
        "date": datetime.now(UTC).isoformat(),
        "minutes": minutes,
        "requests": counts,
        "samples": samples,
        "growth_per_minute": {
            k: {"first_half": first, "second_half": second}
            for k, (first, second) in halves.items()
        },
    }
    reports.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = write_json_atomic(reports / f"soak-{stamp}.json", record)
    print(f"\nrequests: {counts}")
    print("| measure | start | end | growth a minute, first half | second half |")
    print("|---|---|---|---|---|")
    for key, (first, second) in halves.items():
        start, end = samples[0].get(key), samples[-1].get(key)
        print(f"| {key} | {start} | {end} | {first:.3g} | {second:.3g} |")
    return path


def main() -> int:
    minutes = float(os.environ.get("SOAK_MINUTES") or 30)
    every_s = float(os.environ.get("SOAK_SAMPLE_S") or 10)
    # predictions (and kept images) older than 6 minutes are pruned, every 10 minutes: within
    # the run the database must stop growing (default: RETAIN_HOURS=168)
    os.environ.setdefault("RETAIN_HOURS", "0.1")
    settings = config.get_settings()
    folder = Path(tempfile.mkdtemp(prefix="imgclf-soak-"))
    shutil.copytree(settings.models_dir, folder / "models")
    shutil.copytree(settings.data_dir / "train", folder / "data" / "train")
    shutil.copytree(settings.data_dir / "test", folder / "data" / "test")
    copy = replace(
        settings,
        data_dir=folder / "data",
        models_dir=folder / "models",
        reports_dir=folder / "reports",
        cache_dir=None,
    )
    copy.reports_dir.mkdir()
    with Cluster(
        copy, replicas=1, workers_per_replica=2, admin_token=TOKEN, rate_limits=False
    ) as cluster:
        samples, counts = run(cluster, copy.test_dir, minutes, every_s)
    shutil.rmtree(folder, ignore_errors=True)
    print("wrote", report(samples, counts, minutes, settings.reports_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
