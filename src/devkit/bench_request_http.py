"""The HTTP part of ``make bench-request``: this API against ``/health`` and the plain server.

This API runs under gunicorn with 2 workers (``THREADS`` as configured, 4 by default) and the
plain server (``devkit.tutorial_server``, as ``make bench``) under the same configuration,
side by side. Each round runs every cell for ``--seconds`` with hey (keep-alive, as clients
do) at ``--concurrency``, one after the other, and the rounds alternate; a ratio is the median
of its per-round ratios (these machines are noisy):

- ``/health``; ``/predict`` on a small PNG (raw ``image/png`` body); ``/predict/batch`` with
  ``--batch`` small PNGs (multipart), counted in images; the plain server on the small PNG;
  both on a 12 MP phone JPEG;
- ``/predict`` at concurrency 1 (its p99);
- a mix: ``/predict`` at concurrency 3 while ``/predict?explain=true`` runs at 1, side by side.

Before the rounds: how long the API takes from its start until it says it is ready
(``GET /ready`` answers 200; on a tree without it, ``/health`` says ``ok``), and the slowest of
the first explanations and predictions sent right then, each on a new connection.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import requests

from devkit.bench import hey, phone_jpeg
from devkit.processes import GUNICORN, free_port, wait_until_ready

CELLS = ("health", "predict", "batch", "plain", "phone", "plain_phone", "predict_c1", "mix")


def multipart(field: str, payloads: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with each payload as a PNG file in ``field``."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{index}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + payload
        + b"\r\n"
        for index, payload in enumerate(payloads)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def _ready(url: str) -> bool:
    answer = requests.get(f"{url}/ready", timeout=5)
    if answer.status_code != 404:
        return answer.status_code == 200
    return requests.get(f"{url}/health", timeout=5).json().get("status") == "ok"


def _start(app: str | None, env: dict, log: Path) -> tuple[subprocess.Popen, str, float]:
    """A gunicorn server; ``(process, url, seconds until it was ready)``."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        GUNICORN + ([app] if app else []),
        env={**env, "PORT": str(port)},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    if app is None:
        ready = lambda: _ready(url)  # noqa: E731
    else:
        ready = lambda: requests.get(f"{url}/predict", timeout=5).status_code == 405  # noqa: E731
    if not wait_until_ready(process, ready, 300, poll_s=0.1):
        process.kill()
        raise SystemExit(f"the server did not start; see {log}")
    return process, url, round(time.monotonic() - started, 2)


def _slowest_first(url: str, body: bytes, count: int = 8) -> float:
    """The slowest of ``count`` requests sent at once, each on its own connection (ms)."""
    times: list[float] = []

    def one():
        started = time.perf_counter()
        answer = requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=120)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(max(times), 1)


def _inputs(small: bytes, folder: Path, batch: int) -> dict[str, tuple[Path, str]]:
    files = {"small.png": small, "phone.jpg": phone_jpeg()}
    body, batch_type = multipart("images", [small] * batch)
    files["batch.bin"] = body
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {
        "small": (folder / "small.png", "image/png"),
        "phone": (folder / "phone.jpg", "image/jpeg"),
        "batch": (folder / "batch.bin", batch_type),
    }


def http_rounds(settings, small: bytes, folder: Path, args) -> dict:
    """Start both servers, measure readiness and the rounds; stop them."""
    env = {**os.environ, **settings.as_environment(), "WORKERS": "2", "ACCESS_LOG": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn_conf makes one a server
    inputs = _inputs(small, folder, args.batch)
    ours, url, ready_s = _start(None, env, folder / "imgclf.log")
    servers = [ours]
    try:
        startup = {
            "ready_s": ready_s,
            "first_explain_ms": _slowest_first(f"{url}/predict?explain=true", small),
            "first_predict_ms": _slowest_first(f"{url}/predict", small),
        }
        plain, plain_url, _ = _start("devkit.tutorial_server:app", env, folder / "plain.log")
        servers.append(plain)
        rounds = []
        for _ in range(args.rounds):  # kept as they come: a failed run keeps its rounds
            rounds.append(_round(url, plain_url, inputs, args))
            (folder.parent / "bench-request-rounds.json").write_text(json.dumps(rounds))
    finally:
        for process in servers:
            process.terminate()
            process.wait(timeout=60)
    return {
        "method": f"hey -z {args.seconds}s -c {args.concurrency} (keep-alive), {args.rounds} "
        f"alternating rounds; 2 gunicorn workers each; /predict/batch of {args.batch} images",
        "startup": startup,
        "rounds": rounds,
        "summary": summary(rounds, args.batch),
    }


def _round(url: str, plain: str, inputs: dict, args) -> dict:
    seconds, c = args.seconds, args.concurrency
    small, phone, batch = inputs["small"], inputs["phone"], inputs["batch"]
    cell = {
        "health": hey(f"{url}/health", None, "", 0, c, seconds),
        "predict": hey(f"{url}/predict", *small, 0, c, seconds),
        "batch": hey(f"{url}/predict/batch", *batch, 0, c, seconds),
        "plain": hey(f"{plain}/predict", *small, 0, c, seconds),
        "phone": hey(f"{url}/predict", *phone, 0, c, seconds),
        "plain_phone": hey(f"{plain}/predict", *phone, 0, c, seconds),
        "predict_c1": hey(f"{url}/predict", *small, 0, 1, seconds),
    }
    mixed: dict = {}

    def explain():
        mixed["explain"] = hey(f"{url}/predict?explain=true", *small, 0, 1, seconds)

    side = threading.Thread(target=explain)
    side.start()
    mixed["predict"] = hey(f"{url}/predict", *small, 0, max(1, c - 1), seconds)
    side.join()
    cell["mix"] = mixed
    return cell


def _median(values) -> float | None:
    """The median of the values hey gave (None where it gave none: no answer in a cell)."""
    found = [value for value in values if value is not None]
    return round(float(statistics.median(found)), 2) if found else None


def summary(rounds: list[dict], batch: int) -> dict:
    """Medians over the rounds: each cell's rate and p99, and the per-round ratios."""

    def rate(r, name):
        return r[name]["throughput_rps"]

    cells = {
        name: {
            "rps": _median([rate(r, name) for r in rounds]),
            "p50_ms": _median([r[name]["latency_p50_ms"] for r in rounds]),
            "p99_ms": _median([r[name]["latency_p99_ms"] for r in rounds]),
        }
        for name in CELLS
        if name != "mix"
    }
    for part in ("predict", "explain"):
        cells[f"mix_{part}"] = {
            "rps": _median([r["mix"][part]["throughput_rps"] for r in rounds]),
            "p50_ms": _median([r["mix"][part]["latency_p50_ms"] for r in rounds]),
            "p99_ms": _median([r["mix"][part]["latency_p99_ms"] for r in rounds]),
        }
    ratios = {
        "predict_over_health": _median([rate(r, "predict") / rate(r, "health") for r in rounds]),
        "batch_images_over_health": _median(
            [batch * rate(r, "batch") / rate(r, "health") for r in rounds]
        ),
        "small_png_over_plain": _median([rate(r, "predict") / rate(r, "plain") for r in rounds]),
        "phone_jpeg_over_plain": _median(
            [rate(r, "phone") / rate(r, "plain_phone") for r in rounds]
        ),
    }
    errors = sum(_errors(r) for r in rounds)
    return {"cells": cells, "ratios": ratios, "errors": errors, "batch": batch}


def _errors(cell: dict) -> int:
    found = 0
    for value in cell.values():
        if "throughput_rps" not in value:
            found += _errors(value)
            continue
        found += value["errors"] + sum(n for s, n in _codes(value) if s != "200")
    return found


def _codes(result: dict):
    return [(status, int(count)) for status, count in result["status"].items()]


LABELS = {
    "health": "`GET /health`",
    "predict": "`POST /predict`, small PNG",
    "batch": "`POST /predict/batch` (requests)",
    "plain": "plain server, small PNG",
    "phone": "`POST /predict`, 12 MP phone JPEG",
    "plain_phone": "plain server, phone JPEG",
    "predict_c1": "`POST /predict`, small PNG, c=1",
    "mix_predict": "mix: `POST /predict` (c=3) beside explanations",
    "mix_explain": "mix: `POST /predict?explain=true` (c=1)",
}
GOALS = {
    "predict_over_health": ("`/predict` / `/health`", 0.5),
    "batch_images_over_health": ("`/predict/batch` images / `/health` requests", 0.8),
    "small_png_over_plain": ("small PNG: this API / plain server", 1.5),
    "phone_jpeg_over_plain": ("phone JPEG: this API / plain server", 4.0),
}


def http_table(record: dict, before: dict | None) -> str:
    """The markdown of the HTTP part (``before``'s beside it where it has one)."""
    now = record["http"]
    old = (before or {}).get("http")
    both = old is not None

    def cell(data, name):
        c = data["summary"]["cells"][name]
        return f"{c['rps']} ({c['p50_ms']} / {c['p99_ms']})"

    head = "| hey, req/s (p50 / p99 ms) | " + ("before | after |" if both else "measured |")
    lines = [now["method"] + ".", "", head, "|---|---|" + ("---|" if both else "")]
    for name, label in LABELS.items():
        cells = [cell(old, name), cell(now, name)] if both else [cell(now, name)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    start = [
        ("from start to ready (s)", "ready_s"),
        ("slowest of the first 8 explanations (ms)", "first_explain_ms"),
        ("slowest of the first 8 predictions (ms)", "first_predict_ms"),
    ]
    for label, key in start:
        cells = [old["startup"][key], now["startup"][key]] if both else [now["startup"][key]]
        lines.append(f"| {label} | " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| goal | target | " + ("before | after |" if both else "measured |")]
    lines.append("|---|---:|---:|" + ("---:|" if both else ""))
    for key, (label, target) in GOALS.items():
        value = now["summary"]["ratios"][key]
        cells = [f"x{old['summary']['ratios'][key]}"] if both else []
        mark = "" if value >= target else " (**not met**)"
        lines.append(f"| {label} | x{target} | " + " | ".join([*cells, f"x{value}{mark}"]) + " |")
    return "\n".join(lines)
