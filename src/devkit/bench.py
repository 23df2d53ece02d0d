"""``make bench``: /predict over HTTP, this service against a plain server, both under gunicorn.

Both servers run under the same gunicorn configuration (``WORKERS``, ``THREADS``) with the
current model, started side by side; ``hey`` (Debian's HTTP load generator) sends ``REQUESTS``
requests from ``CONCURRENCY`` connections (a tenth as many phone JPEGs) to one server, then
the other, for ``ROUNDS`` alternating rounds per input: the table gives each server's median
round and the median of the per-round ratios (these machines are noisy):

- ``imgclf``: this API (``serve.wsgi``): JPEG draft-mode decoding, one jitted forward pass,
  every prediction logged (SQLite, batched off the request path) and counted (Prometheus).
- ``plain``: ``devkit.tutorial_server``: full decode, resize, ``model.predict`` per request,
  no logging.

Inputs: a 12-megapixel (4000 x 3000) phone-style JPEG and a small PNG from the test split. The
floor: decoding the phone JPEG alone, in process, as this service does it (and fully). Writes
``reports/bench-<time>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from devkit.processes import GUNICORN, free_port, wait_until_ready
from imgclf import config
from imgclf.data.preprocessing import load_image
from imgclf.files import write_json_atomic
from imgclf.model import registry
from imgclf.store import migrations


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


def start_server(app: str | None, env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = GUNICORN + ([app] if app else [])
    process = subprocess.Popen(
        command,
        env={**env, "PORT": str(port), "ACCESS_LOG": ""},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    probe = f"{url}/health" if app is None else f"{url}/predict"

    def ready():
        response = requests.get(probe, timeout=5)
        return response.status_code in (200, 405)

    if not wait_until_ready(process, ready, 180):
        raise SystemExit(f"the server did not start; see {log}")
    return process, url


def hey(
    url: str,
    payload: Path | None,
    content_type: str,
    count: int,
    concurrency: int,
    duration_s: float | None = None,
    keepalive: bool = True,
) -> dict:
    """Run hey (POST ``payload``, or GET without one) for ``count`` requests, or for
    ``duration_s`` seconds (without ``keepalive``: a connection per request); returns
    requests/s, latency percentiles (ms), the status codes seen and the number of requests
    that got no answer (``errors``)."""
    request = ["-m", "POST", "-T", content_type, "-D", str(payload)] if payload else []
    for _ in range(3 * concurrency):  # warm every worker: compilation, caches
        if payload:
            requests.post(url, data=payload.read_bytes(), headers={"Content-Type": content_type})
    amount = ["-z", f"{duration_s}s"] if duration_s else ["-n", str(count)]
    amount += [] if keepalive else ["-disable-keepalive"]
    output = subprocess.run(
        ["hey", *amount, "-c", str(concurrency), *request, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def seconds(label: str) -> float | None:
        found = re.search(rf"{label}% in ([\d.]+) secs", output)
        return round(float(found.group(1)) * 1000, 2) if found else None

    return {
        "throughput_rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), 1),
        "latency_p50_ms": seconds("50"),
        "latency_p95_ms": seconds("95"),
        "latency_p99_ms": seconds("99"),
        "status": dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)),
        "errors": sum(
            int(n)
            for n in re.findall(r"^\s+\[(\d+)\]\s", output.split("Error distribution:")[-1], re.M)
        )
        if "Error distribution:" in output
        else 0,
    }


def decode_floor(payload: bytes, size: tuple[int, int], mode: str, repeats: int = 20) -> dict:
    """Median in-process time of decoding the payload as this service does, and fully."""

    def median_ms(function) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
        return round(float(np.median(times)) * 1000, 2)

    return {
        "draft_decode_ms": median_ms(lambda: load_image(payload, size, mode)),
        "full_decode_ms": median_ms(lambda: Image.open(io.BytesIO(payload)).convert("RGB")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=int(os.environ.get("REQUESTS") or "2000"))
    parser.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("CONCURRENCY") or "8")
    )
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS") or "5"))
    args = parser.parse_args(argv)
    settings = config.get_settings()
    version = registry.current_version(settings.models_dir)
    if version is None:
        raise SystemExit("no current model: run `make train` first")
    info = registry.metadata(settings.models_dir, version)
    folder = Path(tempfile.mkdtemp(prefix="imgclf-bench-"))
    try:
        return _bench(args, settings, info, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _bench(args, settings, info: dict, folder: Path) -> int:
    inputs = {"12 MP phone JPEG": (folder / "phone.jpg", "image/jpeg")}
    inputs["12 MP phone JPEG"][0].write_bytes(phone_jpeg())
    small = next(iter(sorted(settings.test_dir.glob("*/*.png"))))
    inputs["small PNG"] = (folder / "small.png", "image/png")
    shutil.copy(small, inputs["small PNG"][0])
    database = f"sqlite:///{folder / 'bench.db'}"
    migrations.upgrade(database)
    env = {**os.environ, **settings.as_environment(), "DATABASE_URL": database}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    servers = {
        name: start_server(app, env, folder / f"{name}.log")
        for name, app in (("imgclf", None), ("plain", "devkit.tutorial_server:app"))
    }
    try:
        results = {
            name: _rounds(servers, path, content_type, name, args)
            for name, (path, content_type) in inputs.items()
        }
        health = hey(f"{servers['imgclf'][1]}/health", None, "", 4 * args.requests, 8)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    size, mode = tuple(info["image_size"]), info["color_mode"]
    floor = decode_floor(inputs["12 MP phone JPEG"][0].read_bytes(), size, mode)
    record = {
        "created_at": datetime.now(UTC).isoformat(),
        "model_version": info["version"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "method": f"hey -c {args.concurrency}, {args.rounds} alternating rounds per input "
        f"(medians), both servers under gunicorn WORKERS={env.get('WORKERS', 'default')}",
        "results": results,
        "phone_jpeg_decode_floor": floor,
        "health_floor": health,
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = write_json_atomic(settings.reports_dir / f"bench-{stamp}.json", record)
    _print(results, floor, path)
    print(f"GET /health (no model, no logging): {health['throughput_rps']} req/s")
    return 0


def _rounds(servers: dict, path: Path, content_type: str, name: str, args) -> dict:
    """Alternate the two servers for ``ROUNDS`` rounds on one input (the machine is noisy);
    each server's median round, and the median of the per-round ratios."""
    count = args.requests if name == "small PNG" else max(96, args.requests // 10)
    count -= count % args.concurrency  # hey sends count // concurrency per connection
    runs: dict[str, list[dict]] = {implementation: [] for implementation in servers}
    for _ in range(args.rounds):
        for implementation, (_, url) in servers.items():
            runs[implementation].append(
                hey(f"{url}/predict", path, content_type, count, args.concurrency)
            )
    row: dict = {}
    for implementation, measured in runs.items():
        middle = sorted(measured, key=lambda r: r["throughput_rps"])[len(measured) // 2]
        row[implementation] = {**middle, "rounds_rps": [r["throughput_rps"] for r in measured]}
    ratios = [
        ours["throughput_rps"] / plain["throughput_rps"]
        for ours, plain in zip(runs["imgclf"], runs["plain"], strict=True)
    ]
    row["speedup"] = round(float(np.median(ratios)), 2)
    return row


def _print(results: dict, floor: dict, path: Path) -> None:
    print(
        f"\n{'input':18s} {'server':7s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}"
    )
    for name, row in results.items():
        for implementation in ("imgclf", "plain"):
            r = row[implementation]
            print(
                f"{name:18s} {implementation:7s} {r['throughput_rps']:8.1f} "
                f"{r['latency_p50_ms']:8.1f} {r['latency_p95_ms']:8.1f} {r['latency_p99_ms']:8.1f}"
            )
        print(f"{'':18s} speed-up x{row['speedup']}")
    print(
        f"phone JPEG decode alone: {floor['draft_decode_ms']} ms (draft), "
        f"{floor['full_decode_ms']} ms (full)"
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    sys.exit(main())
