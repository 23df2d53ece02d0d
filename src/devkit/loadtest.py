"""``make loadtest``: Locust against 1, 2 and 4 API replicas behind nginx; a table and a plot.

For each replica count: start the cluster (``devkit.cluster``: PostgreSQL, N gunicorn
replicas of ``WORKERS_PER_REPLICA`` workers each, one job worker, nginx), run Locust headless
through the load balancer (``USERS`` users, ``DURATION`` per run), stop the cluster. The last
run also retrains in the middle of the flood. The models folder is a copy, so the load test
never changes your registry. Writes ``reports/loadtest-<time>/``: Locust's CSV and HTML per
run, ``summary.json`` (requests/s, p50, p95, p99, failure rate per replica count) and
``replicas.png`` (throughput and latency against replicas).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import requests

from devkit.cluster import Cluster
from imgclf import config
from imgclf.config import PROJECT_ROOT
from imgclf.files import write_json_atomic

TOKEN = "loadtest-token"


def locust(url: str, users: int, duration: str, prefix: Path) -> None:
    command = [
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
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    subprocess.run(command, cwd=PROJECT_ROOT, check=False)


def aggregated(prefix: Path) -> dict:
    """Requests/s, latency percentiles and the failure rate of all requests of a run."""
    with open(f"{prefix}_stats.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    requests_count, failures = int(row["Request Count"]), int(row["Failure Count"])
    return {
        "requests": requests_count,
        "failures": failures,
        "failure_rate": failures / requests_count if requests_count else 0.0,
        "rps": round(float(row["Requests/s"]), 1),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
    }


def retrain_midway(url: str, delay_s: float, record: dict) -> None:
    """Queue a retrain through the load balancer after ``delay_s``; record how it ended."""
    time.sleep(delay_s)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    job = requests.post(f"{url}/retrain", headers=headers, json={"epochs": 2}, timeout=30).json()
    record["job"] = job.get("id")
    deadline = time.time() + 600
    while time.time() < deadline:
        state = requests.get(f"{url}/retrain/{job['id']}", timeout=30).json()["state"]
        if state not in ("queued", "running"):
            record["state"] = state
            return
        time.sleep(2)


def run(settings: config.Settings, replicas: int, args, folder: Path, retrain: bool) -> dict:
    models = folder / f"models-r{replicas}"
    shutil.copytree(settings.models_dir, models)
    copy = replace(settings, models_dir=models, reports_dir=folder / f"reports-r{replicas}")
    copy.reports_dir.mkdir()
    # Locust sends everything from one address: nginx's per-client limits would only measure
    # themselves, so they are off here (they are on in make cluster and compose)
    cluster = Cluster(
        copy, replicas, args.workers_per_replica, admin_token=TOKEN, rate_limits=False
    )
    retrained: dict = {}
    with cluster:
        if retrain:
            seconds = float(args.duration.rstrip("s"))
            threading.Thread(
                target=retrain_midway, args=(cluster.url, seconds / 3, retrained), daemon=True
            ).start()
        prefix = folder / f"replicas-{replicas}"
        locust(cluster.url, args.users, args.duration, prefix)
        result = aggregated(prefix)
        deadline = time.time() + 600
        while retrain and "state" not in retrained and time.time() < deadline:
            time.sleep(2)
    return {**result, **({"retrain": retrained} if retrain else {})}


def plot(results: dict[int, dict], path: Path, xlabel: str = "API replicas behind nginx") -> Path:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    counts = sorted(results)
    figure, left = plt.subplots(figsize=(6, 3.5), layout="constrained")
    left.plot(counts, [results[n]["rps"] for n in counts], "o-", color="tab:blue")
    left.set_xlabel(xlabel)
    left.set_ylabel("requests/s", color="tab:blue")
    left.set_xticks(counts)
    right = left.twinx()
    for key, style in (("p50_ms", "s--"), ("p95_ms", "^--")):
        right.plot(
            counts,
            [results[n][key] for n in counts],
            style,
            color="tab:orange",
            label=key.replace("_ms", ""),
        )
    right.set_ylabel("latency, ms", color="tab:orange")
    right.legend(loc="upper right")
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    for n in counts:
        if "retrain" in results[n]:
            left.annotate(
                "retrain during\nthis run",
                (n, results[n]["rps"]),
                fontsize=8,
                textcoords="offset points",
                xytext=(-60, -30),
            )
    left.set_title(f"Locust through nginx, {os.cpu_count()} cores")
    figure.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.loadtest", description=__doc__)
    parser.add_argument("--replicas", default=(os.environ.get("LOAD_REPLICAS") or "1,2,4"))
    parser.add_argument(
        "--workers-per-replica",
        type=int,
        default=int(os.environ.get("WORKERS_PER_REPLICA") or "1"),
    )
    parser.add_argument("--users", type=int, default=int(os.environ.get("USERS") or "16"))
    parser.add_argument("--duration", default=(os.environ.get("DURATION") or "30s"))
    args = parser.parse_args(argv)
    settings = config.get_settings()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = settings.reports_dir / f"loadtest-{stamp}"
    out.mkdir(parents=True)
    counts = [int(n) for n in args.replicas.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for replicas in counts:
            results[replicas] = run(
                settings, replicas, args, Path(folder), retrain=replicas == counts[-1]
            )
            for name in Path(folder).glob(f"replicas-{replicas}*"):
                shutil.copy(name, out / name.name)
    print(f"\n{'replicas':>8s} {'req/s':>7s} {'p50':>6s} {'p95':>6s} {'p99':>6s} {'failed':>7s}")
    for replicas, r in results.items():
        print(
            f"{replicas:8d} {r['rps']:7.1f} {r['p50_ms']:6.0f} {r['p95_ms']:6.0f} "
            f"{r['p99_ms']:6.0f} {r['failure_rate']:7.2%}"
        )
    record = {
        "created_at": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "users": args.users,
        "duration": args.duration,
        "workers_per_replica": args.workers_per_replica,
        "results": {str(k): v for k, v in results.items()},
    }
    write_json_atomic(out / "summary.json", record)
    plot(results, out / "replicas.png")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
