"""``make bench``'s backbone section (alone: ``make bench-backbone``): a real network,
EfficientNet-Lite0 at 224 px, served by JAX and by OpenVINO, with and without micro-batching.

A Lite0 classifier (ImageNet weights, a 10-class head; 224 x 224 RGB input, so nothing is
resized inside the network) is registered in a temporary registry, then:

- **floor**: in this process, ``Predictor.answers`` for each runtime with every core
  (``INFERENCE_THREADS``), one image a call and ``BATCH_MAX_SIZE`` a call; the median time
  per image of the faster is the runtime's floor (what no server can beat on this machine).
- **HTTP**: four gunicorn servers side by side, the same settings (``WORKERS``, ``THREADS``)
  but ``INFERENCE_RUNTIME`` (jax, openvino) and ``BATCH_MAX_SIZE`` (1: off; the default: on);
  ``hey`` sends a 224 px JPEG photo for ``BACKBONE_SECONDS`` (8) at concurrency 1, 4 and 16 to
  one server after the other, for ``ROUNDS`` (3) alternating rounds. Each cell is the median
  round; ratios are medians of the per-round ratios (these machines are noisy).

The issue's targets are checked and printed with the figures they rest on. Writes
``reports/bench-backbone-<time>.json`` and the table in docs/benchmarks.md (between ``MARKERS``).
"""

from __future__ import annotations

import io
import json
import os
import platform
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

from devkit.bench import hey, start_server
from devkit.bench_train import publish
from imgclf import config
from imgclf.store import migrations

MARKERS = ("<!-- bench-backbone -->", "<!-- /bench-backbone -->")
CONCURRENCY = (1, 4, 16)
SIZE = 224
#: The batch size the batching servers are given (BATCH_MAX_SIZE=auto's, for OpenVINO).
AUTO_BATCH = 8
#: (name, INFERENCE_RUNTIME, micro-batching on)
SERVERS = (
    ("jax", "jax", False),
    ("jax+batching", "jax", True),
    ("openvino", "openvino", False),
    ("openvino+batching", "openvino", True),
)


def register_lite0(models_dir: Path, folder: Path) -> str:
    """Register an EfficientNet-Lite0 classifier (ImageNet weights, 10 classes) as current."""
    from imgclf.model import network, registry

    network.set_seed(0)
    model = network.build_model(
        10, (SIZE, SIZE, 3), backbone="efficientnet_lite0", backbone_weights="imagenet"
    )
    path = network.save_model(model, folder / "lite0.keras")
    info = {
        "class_names": [f"class{i}" for i in range(10)],
        "image_size": [SIZE, SIZE],
        "color_mode": "rgb",
        "parameters": {"backbone": "efficientnet_lite0"},
    }
    version = registry.register(models_dir, path, info)
    registry.promote(models_dir, version)
    return version


def photo_jpeg() -> bytes:
    """A 224 px JPEG of a real photo (scikit-learn's bundled china.jpg, centre crop)."""
    from sklearn.datasets import load_sample_image

    pixels = load_sample_image("china.jpg")
    side = min(pixels.shape[:2])
    top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
    image = Image.fromarray(pixels[top : top + side, left : left + side]).resize((SIZE, SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _predictor(models_dir: Path, runtime: str, threads: int):
    from imgclf.model import registry
    from imgclf.model.network import load_model
    from imgclf.model.prediction import Predictor

    version = registry.current_version(models_dir)
    return Predictor(
        version,
        registry.metadata(models_dir, version),
        load_model(registry.model_path(models_dir, version)),
        models_dir=models_dir,
        requested_runtime=runtime,
        threads=threads,
    )


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (count, SIZE, SIZE, 3)).astype(np.float32)


def in_process(models_dir: Path, runtime: str, batch: int, repeats: int = 30) -> dict:
    """Median milliseconds per image in this process with every core, one image a call and
    ``batch`` a call."""
    predictor = _predictor(models_dir, runtime, os.cpu_count() or 1)
    row = {"runtime": predictor.runtime}
    for size in sorted({1, batch}):
        images = _images(size)
        predictor.answers(images)  # compiled, warm
        times = []
        for _ in range(max(5, repeats // size)):
            started = time.perf_counter()
            predictor.answers(images)
            times.append((time.perf_counter() - started) / size)
        row[f"batch_{size}_ms"] = round(float(np.median(times)) * 1000, 2)
    return row


def _floor_child(
    models_dir: str, runtime: str, threads: str, batch: str, start_at: str, seconds: str
) -> dict:
    """One of ``as_served``'s processes: images a second from ``start_at`` for ``seconds``."""
    predictor = _predictor(Path(models_dir), runtime, int(threads))
    images = _images(int(batch))
    predictor.answers(images)
    time.sleep(max(0.0, float(start_at) - time.time()))
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < float(seconds):
        predictor.answers(images)
        done += len(images)
    late = time.time() - float(seconds) - float(start_at)
    return {"images_per_s": done / (time.perf_counter() - started), "late_s": round(late, 2)}


def as_served(
    models_dir: Path, runtime: str, workers: int, batch: int, seconds: float, threads: int = 0
) -> float:
    """Images a second of ``workers`` processes side by side, each with the threads a gunicorn
    worker gets (``INFERENCE_THREADS``; BLAS and XLA as ``serve/gunicorn_conf.py`` sizes them),
    without HTTP: the floor of the served layout."""
    threads = threads or config.get_runtime_settings().threads
    per_worker = max(1, (os.cpu_count() or 1) // workers)  # as serve/gunicorn_conf.py sizes
    env = {**os.environ, "INFERENCE_THREADS": str(threads), "OMP_NUM_THREADS": str(per_worker)}
    if per_worker == 1:
        env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    start_at = time.time() + 40  # every child loaded and compiled by then
    command = [
        sys.executable,
        "-m",
        "devkit.bench_backbone",
        "floor-child",
        str(models_dir),
        runtime,
        str(threads),
        str(batch),
        str(start_at),
        str(seconds),
    ]
    children = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for _ in range(workers)
    ]
    results = [
        json.loads(child.communicate()[0].decode().strip().splitlines()[-1]) for child in children
    ]
    if any(r["late_s"] > 1 for r in results):
        print(f"note: the {runtime} floor's processes did not run side by side: {results}")
    return round(sum(r["images_per_s"] for r in results), 1)


def floor(models_dir: Path, batch: int, workers: int, seconds: float = 8) -> dict:
    """Per runtime: in this process with every core (``in_process``), as served (``as_served``,
    one image a call and ``batch``) and, for OpenVINO, as served with one thread a worker (the
    layout that computes most on some machines); the floor is the most images a second of them
    all, whichever layout gave it: no server can beat it on this machine."""
    found = {}
    for runtime in ("jax", "openvino"):
        row = in_process(models_dir, runtime, batch)
        for size in sorted({1, batch}):
            row[f"served_batch_{size}_per_s"] = as_served(
                models_dir, runtime, workers, size, seconds
            )
        if runtime == "openvino" and config.get_runtime_settings().threads > 1:
            row["served_1_thread_per_s"] = as_served(models_dir, runtime, workers, 1, seconds, 1)
        alone = 1000 / min(v for k, v in row.items() if k.endswith("_ms"))
        served = max(v for k, v in row.items() if k.startswith("served_"))
        row["floor_images_per_s"] = round(max(alone, served), 1)
        found[runtime] = row
        print(runtime, row, flush=True)
    return found


def _wait_served(url: str, runtime: str, checks: int = 20) -> dict:
    """Wait until ``checks`` /health answers in a row say a model is served; the last one."""
    deadline, seen = time.time() + 600, 0
    while seen < checks:
        health = requests.get(f"{url}/health", timeout=10).json()
        seen = seen + 1 if health["status"] == "ok" else 0
        if time.time() > deadline:
            raise SystemExit(f"{url}: no model served after 10 minutes: {health}")
        time.sleep(0.05 if seen else 1.0)
    if health["runtime"] != runtime:
        print(f"note: {url} serves with {health['runtime']}: {health['runtime_note']}")
    return health


def http(env: dict, folder: Path, seconds: float, rounds: int) -> dict:
    """The four servers, side by side: per server and concurrency, the median round."""
    payload = folder / "photo.jpg"
    payload.write_bytes(photo_jpeg())
    batch = config.get_runtime_settings().batch_max_size or AUTO_BATCH
    servers, health = {}, {}
    try:
        for name, runtime, batching in SERVERS:
            settings = {
                "INFERENCE_RUNTIME": runtime,
                "BATCH_MAX_SIZE": str(batch if batching else 1),
            }
            servers[name] = start_server(None, {**env, **settings}, folder / f"{name}.log")
            health[name] = _wait_served(servers[name][1], runtime)
        runs = {name: {c: [] for c in CONCURRENCY} for name in servers}
        for round_ in range(rounds):
            for concurrency in CONCURRENCY:
                for name, (_, url) in servers.items():
                    measured = _timed_hey(f"{url}/predict", payload, concurrency, seconds)
                    runs[name][concurrency].append(measured)
                    print(
                        f"round {round_ + 1} c={concurrency:2d} {name:18s} "
                        f"{measured['throughput_rps']:7.1f} req/s",
                        flush=True,
                    )
        memory = {name: _workers_rss_mib(process.pid) for name, (process, _) in servers.items()}
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    return {"runs": runs, "health": health, "batch_max_size": batch, "rss_mib": memory}


def _workers_rss_mib(master: int) -> list[float]:
    """Resident memory of each gunicorn worker of ``master`` now (after the load)."""
    import psutil

    workers = psutil.Process(master).children()
    return sorted(round(worker.memory_info().rss / 2**20, 1) for worker in workers)


def _timed_hey(url: str, payload: Path, concurrency: int, seconds: float) -> dict:
    """hey for about ``seconds``: a count of requests sized by a short run first (hey's own
    time limit would abort the requests in flight at the end and count them as errors)."""
    probe = hey(url, payload, "image/jpeg", 4 * concurrency, concurrency, keepalive=False)
    count = max(100, 4 * concurrency, int(probe["throughput_rps"] * seconds))
    count -= count % concurrency  # hey sends count // concurrency per connection
    return hey(url, payload, "image/jpeg", count, concurrency, keepalive=False)


def _median_run(measured: list[dict]) -> dict:
    middle = sorted(measured, key=lambda r: r["throughput_rps"])[len(measured) // 2]
    return {**middle, "rounds_rps": [r["throughput_rps"] for r in measured]}


def _ratio(runs: dict, top: str, bottom: str, concurrency: int, key="throughput_rps") -> float:
    pairs = zip(runs[top][concurrency], runs[bottom][concurrency], strict=True)
    return round(float(np.median([a[key] / b[key] for a, b in pairs])), 2)


def targets(record: dict) -> dict:
    """The issue's targets, each with its figures and whether it is met."""
    runs, cells = record["http"]["runs"], record["cells"]
    wait_ms = record["settings"]["batch_max_wait_ms"]
    openvino_floor_rps = record["floor"]["openvino"]["floor_images_per_s"]
    best = max(cells["openvino+batching"][c]["throughput_rps"] for c in CONCURRENCY)
    p99_added = [
        a["latency_p99_ms"] - b["latency_p99_ms"]
        for a, b in zip(runs["openvino+batching"][1], runs["openvino"][1], strict=True)
    ]
    errors = sum(
        r["errors"] + sum(int(n) for code, n in r["status"].items() if code != "200")
        for by_c in runs.values()
        for measured in by_c.values()
        for r in measured
    )
    found = {
        "openvino_vs_jax_http": min(_ratio(runs, "openvino", "jax", c) for c in CONCURRENCY),
        "batching_gain_c16": _ratio(runs, "openvino+batching", "openvino", 16),
        "p99_added_c1_ms": round(float(np.median(p99_added)), 2),
        "errors": errors,
        "floor_vs_http": round(openvino_floor_rps / best, 2),
    }
    return {
        **found,
        "met": {
            "openvino at least 2.5x jax over HTTP (batching off, every concurrency)": found[
                "openvino_vs_jax_http"
            ]
            >= 2.5,
            "micro-batching at least 1.2x at concurrency 16": found["batching_gain_c16"] >= 1.2,
            f"p99 at concurrency 1 at most {wait_ms + 2:g} ms worse with batching": found[
                "p99_added_c1_ms"
            ]
            <= wait_ms + 2,
            "0 errors": errors == 0,
            "HTTP within 1.3x of the in-process floor": found["floor_vs_http"] <= 1.3,
        },
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(record: dict) -> str:
    settings, found = record["settings"], record["targets"]
    lines = [
        f"`make bench` (backbone section): EfficientNet-Lite0, 224 px RGB JPEG photo, gunicorn "
        f"WORKERS={settings['workers']} THREADS={settings['threads']}, INFERENCE_THREADS="
        f"{settings['inference_threads']}; BATCH_MAX_SIZE={settings['batch_max_size']} on the "
        f"+batching servers, 1 on the others, BATCH_MAX_WAIT_MS="
        f"{settings['batch_max_wait_ms']:g}; hey (a connection a request) for "
        f"{settings['seconds']:g} s a cell, {settings['rounds']} alternating rounds (medians); "
        f"{record['machine']['cpus']} cores; {record['date']}.",
        "",
        "| server | "
        + " | ".join(f"c={c} req/s (p50 / p99 ms)" for c in CONCURRENCY)
        + " | worker memory (MiB) |",
        "|---|" + "---|" * (len(CONCURRENCY) + 1),
    ]
    for name, _, _ in SERVERS:
        cells = [
            f"{cell['throughput_rps']:.1f} ({_ms(cell['latency_p50_ms'])} / "
            f"{_ms(cell['latency_p99_ms'])})"
            for cell in (record["cells"][name][c] for c in CONCURRENCY)
        ]
        memory = " / ".join(f"{m:,.0f}" for m in record["http"].get("rss_mib", {}).get(name, []))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {memory} |")
    batch = settings["batch_max_size"]
    for name, row in record["floor"].items():
        lines.append(
            f"| without HTTP, {name} | floor {row['floor_images_per_s']:.1f} images/s: "
            f"{settings['workers']} processes side by side {row['served_batch_1_per_s']:.1f} "
            f"(batches of {batch}: {row[f'served_batch_{batch}_per_s']:.1f}"
            + (
                f"; one thread each: {row['served_1_thread_per_s']:.1f}"
                if "served_1_thread_per_s" in row
                else ""
            )
            + ") | one process, "
            f"every core: {row['batch_1_ms']} ms an image alone, {row[f'batch_{batch}_ms']} ms "
            f"in batches of {batch} | | |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    figures = [
        f"x{found['openvino_vs_jax_http']} (lowest over concurrencies)",
        f"x{found['batching_gain_c16']}",
        f"{found['p99_added_c1_ms']:+.2f} ms",
        str(found["errors"]),
        f"floor / best HTTP = {found['floor_vs_http']}",
    ]
    for (target, met), figure in zip(found["met"].items(), figures, strict=True):
        lines.append(f"| {target} | {figure} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "floor-child":
        print(json.dumps(_floor_child(*argv[1:])))
        return 0
    seconds = float(os.environ.get("BACKBONE_SECONDS") or 8)
    rounds = int(os.environ.get("ROUNDS") or 3)
    settings, runtime = config.get_settings(), config.get_runtime_settings()
    server = config.get_server_settings()
    batch = runtime.batch_max_size or AUTO_BATCH
    folder = Path(tempfile.mkdtemp(prefix="imgclf-bench-backbone-"))
    try:
        models = folder / "models"
        print("registering EfficientNet-Lite0 (ImageNet weights) ...", flush=True)
        register_lite0(models, folder)
        print("the floor, without HTTP ...", flush=True)
        found_floor = floor(models, batch, server.workers)
        database = f"sqlite:///{folder / 'bench.db'}"
        migrations.upgrade(database)
        env = {**os.environ, **settings.as_environment(), "DATABASE_URL": database}
        env["MODELS_DIR"] = str(models)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        measured = http(env, folder, seconds, rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "workers": server.workers,
            "threads": server.threads,
            "seconds": seconds,
            "rounds": rounds,
            "batch_max_size": batch,
            "batch_max_wait_ms": runtime.batch_max_wait_ms,
            "inference_threads": runtime.threads,
        },
        "floor": found_floor,
        "http": measured,
        "cells": {
            name: {c: _median_run(measured["runs"][name][c]) for c in CONCURRENCY}
            for name in measured["runs"]
        },
    }
    record["targets"] = targets(record)
    publish("bench-backbone", record, table(record), MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
