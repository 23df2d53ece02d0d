"""``make loadtest``: locust against real gunicorn with 1, 2 and 4 workers; a table and JSON.

For each worker count: start gunicorn on a free port, wait for /health, run locust headless
(``USERS`` users, ``DURATION`` per run), stop gunicorn. Writes
``reports/loadtest-<time>.json`` with throughput, latency percentiles and failures per run.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import requests

from devkit.processes import GUNICORN, free_port, wait_until_ready
from imgclf import config
from imgclf.config import PROJECT_ROOT
from imgclf.files import write_json_atomic


def run_once(workers: int, users: int, duration: str, folder: Path) -> dict:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "WORKERS": str(workers), "ACCESS_LOG": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen(
        GUNICORN,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            return requests.get(f"{url}/health", timeout=5).json()["status"] == "ok"

        if not wait_until_ready(server, healthy, timeout_s=120):
            raise SystemExit(f"gunicorn with {workers} workers did not start")
        prefix = folder / f"w{workers}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                "locustfile.py",
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                duration,
                "--host",
                url,
                "--csv",
                str(prefix),
                "--only-summary",
                "--loglevel",
                "WARNING",
            ],
            cwd=PROJECT_ROOT,
            check=False,
        )
        with open(f"{prefix}_stats.csv") as handle:
            rows = {row["Name"]: row for row in csv.DictReader(handle)}
    finally:
        server.terminate()
        server.wait(timeout=60)

    def figures(row):
        return {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "rps": round(float(row["Requests/s"]), 1),
            "p50_ms": float(row["50%"]),
            "p95_ms": float(row["95%"]),
            "p99_ms": float(row["99%"]),
        }

    return {name: figures(row) for name, row in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.loadtest", description=__doc__)
    parser.add_argument("--workers", default=os.environ.get("LOAD_WORKERS", "1,2,4"))
    parser.add_argument("--users", type=int, default=int(os.environ.get("USERS", "16")))
    parser.add_argument("--duration", default=os.environ.get("DURATION", "30s"))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for workers in [int(w) for w in args.workers.split(",")]:
            results[workers] = run_once(workers, args.users, args.duration, Path(folder))
    print(
        f"\n{'workers':>7s} {'endpoint':24s} {'req/s':>7s} {'p50':>6s} {'p95':>6s} "
        f"{'p99':>6s} {'fail':>5s}"
    )
    for workers, rows in results.items():
        for name, r in rows.items():
            print(
                f"{workers:7d} {name:24s} {r['rps']:7.1f} {r['p50_ms']:6.0f} "
                f"{r['p95_ms']:6.0f} {r['p99_ms']:6.0f} {r['failures']:5d}"
            )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    record = {
        "created_at": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "users": args.users,
        "duration": args.duration,
        "results": {str(k): v for k, v in results.items()},
    }
    path = write_json_atomic(config.get_settings().reports_dir / f"loadtest-{stamp}.json", record)
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
