"""``make bench-request``: what one ``/predict`` costs, piece by piece, and over HTTP.

Two parts, on the current model, with every feature on (unknown score, calibration, the
prediction log and its journal, kept images, metrics, feedback tokens):

- **profile** (in process, no socket): the API's WSGI app answers a small PNG (raw
  ``image/png`` body) ``--repeats`` times; each piece of the request is then timed alone with
  the app's own objects (median of ``--repeats`` calls), and the rest of the whole request
  (Flask's routing, contexts, hooks) is what the pieces do not add up to. Metrics are in
  prometheus_client's multiprocess mode, as under gunicorn.
- **http** (``devkit.bench_request_http``): this API (2 gunicorn workers) and the plain
  server (``devkit.tutorial_server``) side by side, hey at ``--concurrency``, alternating
  rounds of ``/health``, ``/predict`` (small PNG, phone JPEG), ``/predict/batch`` and the plain
  server; ``/predict`` at c=1 and under a mix with explanations; the time to ready.

Writes ``reports/bench-request-<time>.json`` and the table between the ``bench-request``
markers of ``docs/benchmarks.md``; ``--before report.json`` puts an earlier run beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from devkit.bench_train import publish

MARKERS = ("<!-- bench-request -->", "<!-- /bench-request -->")


def _median_us(function, repeats: int, setup=None) -> float:
    """Median time of ``function(setup())`` in microseconds (``setup`` is not timed)."""
    times = []
    for _ in range(repeats):
        argument = setup() if setup else None
        started = time.perf_counter()
        function(argument) if setup else function()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e6, 1)


def _wsgi_call(app, environ_for):
    """``call(environ)`` of the app as a WSGI server calls it (the body read to the end)."""

    def call(environ):
        status = []
        body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
        assert status[0].startswith("200"), (status, body[:200])

    return call, environ_for


def _environ(path: str, payload: bytes | None, content_type: str = "image/png"):
    from werkzeug.test import EnvironBuilder

    def build():
        method = "POST" if payload is not None else "GET"
        builder = EnvironBuilder(
            path=path, method=method, data=payload, content_type=content_type if payload else None
        )
        builder.environ_base = {"REMOTE_ADDR": "127.0.0.1"}
        try:
            return builder.get_environ()
        finally:
            builder.close()

    return build


class _Timer:
    """Wraps callables so that each call adds its duration to a label (in one request)."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def add(self, label: str, started: float) -> None:
        self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - started

    def wrap(self, owner, name: str, label: str) -> None:
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(label, started)

        setattr(owner, name, timed)

    def metric(self, module, name: str, label: str) -> None:
        """Time a metric's ``labels(...)`` and its child's ``inc`` or ``observe``."""
        timer, metric = self, getattr(module, name)

        class Child:
            def __init__(self, child):
                self.child = child

            def inc(self, *args):
                started = time.perf_counter()
                self.child.inc(*args)
                timer.add(label, started)

            def observe(self, *args):
                started = time.perf_counter()
                self.child.observe(*args)
                timer.add(label, started)

        class Proxy:
            def labels(self, *args):
                started = time.perf_counter()
                child = metric.labels(*args)
                timer.add(label, started)
                return Child(child)

        setattr(module, name, Proxy())


def instrument(timer: _Timer, worker):
    """Wrap the pieces of ``/predict`` in this tree; returns a function that turns the
    inclusive times of one request into the pieces (each counted once)."""
    import flask_smorest.response

    from imgclf.model import calibration
    from serve import metrics, schemas
    from serve.routes import predict

    predictor = worker.model.loaded
    wraps = [
        (predict.blueprint.ARGUMENTS_PARSER, "parse", "request: query string (webargs schema)"),
        (predict, "_explain", "request: query string (plain check)"),
        (predict, "_read_image_payload", "request: body"),
        (predictor, "_decode", "decode (draft mode) and image facts"),
        (predictor, "answers", "answers"),
        (calibration, "scale", "calibration"),
        (type(predictor.novelty), "unknown", "unknown score"),
        (predictor, "describe", "prediction object"),
        (predict, "_row", "row"),
        (predict, "client_fingerprint", "fingerprint"),
        (predict, "feedback_token", "token"),
        (worker.log, "add", "prediction log: queue and journal write"),
        (worker.keeper, "keep", "kept image (queued)"),
        (schemas.Prediction, "dump", "response: schema dump (marshmallow)"),
        (flask_smorest.response, "jsonify", "response: JSON encoding (jsonify)"),
        (predict, "_json", "response: JSON encoding, once"),
    ]
    if worker.batcher is not None:
        wraps.append((worker.batcher, "answers", "batcher"))
    for owner, name, label in wraps:
        if hasattr(owner, name):
            timer.wrap(owner, name, label)
    for name in ("REQUESTS", "PREDICT_LATENCY", "PREDICTIONS", "UNKNOWN"):
        timer.metric(metrics, name, "metrics (Prometheus, multiprocess files)")

    def exclusive(spent: dict) -> dict:
        answers = spent.pop("answers", 0.0)
        batcher = spent.pop("batcher", answers)
        inner = spent.get("calibration", 0.0) + spent.get("unknown score", 0.0)
        fingerprint = spent.pop("fingerprint", 0.0)
        spent[f"inference ({predictor.runtime})"] = answers - inner
        spent["micro-batching hand-off (another thread)"] = batcher - answers
        spent["log row: id, SHA-256"] = spent.pop("row", 0.0) - fingerprint
        spent["auth: client fingerprint, feedback token"] = fingerprint + spent.pop("token", 0.0)
        return spent

    return exclusive


def profile(settings, payload: bytes, repeats: int) -> dict:
    """The whole ``/predict`` and its pieces (microseconds, medians), in this process: the
    whole request without instruments, then each piece inside instrumented requests."""
    from serve.app import create_app

    app = create_app(settings)
    worker = app.extensions["imgclf"]
    deadline = time.monotonic() + 300
    while worker.model.loaded is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"the model did not load: {worker.model.last_error}")
        time.sleep(0.2)
    call, build = _wsgi_call(app, _environ("/predict", payload))
    for _ in range(20):
        call(build())
    total = _median_us(call, repeats, build)
    health_call, health_env = _wsgi_call(app, _environ("/health", None))
    health = _median_us(health_call, repeats, health_env)
    timer = _Timer()
    exclusive = instrument(timer, worker)
    measured: list[dict] = []
    for _ in range(repeats):
        environ = build()
        timer.spent = {}
        call(environ)
        measured.append(exclusive(dict(timer.spent)))
    worker.log.flush()
    pieces = {
        name: round(statistics.median(one.get(name, 0.0) for one in measured) * 1e6, 1)
        for name in ORDER
        if any(name in one for one in measured)
    }
    pieces |= {  # a piece of another tree, named here by its own label
        name: round(statistics.median(one.get(name, 0.0) for one in measured) * 1e6, 1)
        for name in measured[0]
        if name not in pieces and not name.startswith("inference")
    }
    inference = next(name for name in measured[0] if name.startswith("inference"))
    pieces[inference] = round(statistics.median(one[inference] for one in measured) * 1e6, 1)
    rest = round(total - sum(pieces.values()), 1)
    return {
        "total_us": total,
        "health_us": health,
        "pieces_us": {**pieces, REST: rest},
    }


REST = "Flask, werkzeug, flask-smorest: the rest"
ORDER = (
    "request: query string (webargs schema)",
    "request: query string (plain check)",
    "request: body",
    "decode (draft mode) and image facts",
    "micro-batching hand-off (another thread)",
    "calibration",
    "unknown score",
    "prediction object",
    "log row: id, SHA-256",
    "auth: client fingerprint, feedback token",
    "prediction log: queue and journal write",
    "kept image (queued)",
    "metrics (Prometheus, multiprocess files)",
    "response: schema dump (marshmallow)",
    "response: JSON encoding (jsonify)",
    "response: JSON encoding, once",
)


def _project_copy(settings, folder: Path):
    """The settings on a copy of the data folder, with a fresh SQLite database."""
    from imgclf.store import migrations

    data = folder / "data"
    shutil.copytree(
        settings.data_dir, data, ignore=shutil.ignore_patterns("retained", "uploads", "*.db*")
    )
    database = f"sqlite:///{folder / 'bench.db'}"
    migrations.upgrade(database)
    return replace(settings, data_dir=data, database_url=database)


def table(record: dict, before: dict | None) -> str:
    """The markdown of a run (and of ``before``, side by side)."""
    from devkit.bench_request_http import http_table

    prof = record["profile"]
    old = (before or {}).get("profile")
    head = "| piece of `POST /predict` (small PNG, raw body) | " + (
        "before (us) | after (us) |" if old else "us (median) |"
    )
    lines = [head, "|---|---:|" + ("---:|" if old else "")]
    names = list(prof["pieces_us"])
    if old:
        names += [name for name in old["pieces_us"] if name not in prof["pieces_us"]]
    for name in names:
        now = prof["pieces_us"].get(name, "-")
        cells = [str(old["pieces_us"].get(name, "-")), str(now)] if old else [str(now)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, key in (("whole request (WSGI app)", "total_us"), ("`GET /health`", "health_us")):
        cells = [str(old[key]), str(prof[key])] if old else [str(prof[key])]
        lines.append(f"| **{label}** | " + " | ".join(f"**{c}**" for c in cells) + " |")
    caption = (
        f"`make bench-request`: model {record['model_version']}, {record['machine']['cpus']} "
        f"cores, {record['created_at'][:10]}; in process, {record['repeats']} calls a piece."
    )
    parts = [caption, "", *lines]
    if "http" in record:
        parts += ["", http_table(record, before)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench_request", description=__doc__)
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("REPEATS") or "400"))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS") or "5"))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SECONDS") or "4"))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="images a /predict/batch")
    parser.add_argument("--before", type=Path, help="an earlier report to put beside this one")
    parser.add_argument("--skip-http", action="store_true", help="the profile only")
    parser.add_argument("--skip-profile", action="store_true", help="the HTTP rounds only")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="imgclf-bench-request-"))
    # as under gunicorn: the metrics in multiprocess mode (before prometheus_client loads)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
    (folder / "metrics").mkdir()
    os.environ.setdefault("IMGCLF_ADMIN_TOKEN", "bench-request-token")  # feedback tokens on
    try:
        return _run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(args, folder: Path) -> int:
    from imgclf import config
    from imgclf.model import registry

    settings = config.get_settings()
    version = registry.current_version(settings.models_dir)
    if version is None:
        raise SystemExit("no current model: run `make train` first")
    settings = _project_copy(settings, folder)
    small = next(iter(sorted(settings.test_dir.glob("*/*.png")))).read_bytes()
    record = {
        "created_at": datetime.now(UTC).isoformat(),
        "model_version": version,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "repeats": args.repeats,
    }
    if not args.skip_profile:
        record["profile"] = profile(settings, small, args.repeats)
    if not args.skip_http:
        from devkit.bench_request_http import http_rounds

        record["http"] = http_rounds(settings, small, folder, args)
    before = json.loads(args.before.read_text()) if args.before else None
    if before:
        record["before"] = str(args.before)
    if "profile" not in record and before:
        record["profile"] = before["profile"]
    publish("bench-request", record, table(record, before), MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
