"""``make loadtest-containers``: Locust through nginx against 1, 2 and 4 API containers.

The container counterpart of ``make loadtest`` (which counts gunicorn replicas on the host):
for each count the whole stack of compose.yaml is brought up by ``devkit.stack`` under its
own project name (``imgclf-load``: your stack and its volumes are not touched) with
``REPLICAS`` API containers of ``WORKERS_PER_REPLICA`` (1) gunicorn workers, Locust runs
headless through the load balancer (``USERS`` 16, ``DURATION`` 30s), and the stack goes down
again (the volumes, with the first model the worker trained, stay for the next count). nginx
runs without its per-client limits: Locust sends everything from one address.

Writes ``reports/loadtest-containers-<time>/`` (Locust's CSV and HTML, ``summary.json``,
``containers.png``), the JSON to ``reports/``, and the table and the plot to
docs/deployment.md. CONTAINER_ENGINE and OFFLINE as for ``make stack-up``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

from devkit.bench_train import publish
from devkit.loadtest import aggregated, locust, plot
from devkit.processes import free_port
from devkit.stack.__main__ import STATE_DIR
from devkit.stack.engine import find
from imgclf.config import PROJECT_ROOT, get_settings
from imgclf.files import write_json_atomic

PROJECT = "imgclf-load"
DOCS = PROJECT_ROOT / "docs" / "deployment.md"
MARKERS = ("<!-- loadtest-containers -->", "<!-- /loadtest-containers -->")


def nginx_without_limits() -> Path:
    """deploy/nginx/nginx.conf without its ``limit_req`` lines (one client: Locust)."""
    lines = (PROJECT_ROOT / "deploy" / "nginx" / "nginx.conf").read_text().splitlines()
    kept = [line for line in lines if not line.strip().startswith("limit_req")]
    STATE_DIR.mkdir(exist_ok=True)
    path = STATE_DIR / "nginx-load.conf"
    path.write_text("\n".join(kept) + "\n")
    return path


def stack(action: str, environment: dict) -> None:
    command = [sys.executable, "-m", "devkit.stack", action]
    subprocess.run(command, env=environment, check=True, timeout=1800)


def serving(url: str, timeout_s: float) -> None:
    """Wait until the load balancer answers predictions (the first model may be training)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=5).json().get("status") == "ok":
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(2)
    raise RuntimeError(f"{url} did not serve a model within {timeout_s:.0f} s")


def run(count: int, args, environment: dict, folder: Path) -> dict:
    environment = {**environment, "REPLICAS": str(count)}
    url = f"http://127.0.0.1:{environment['LB_PORT']}"
    started = time.time()
    stack("up", environment)
    try:
        serving(url, 900)
        up_s = time.time() - started
        prefix = folder / f"containers-{count}"
        locust(url, args.users, args.duration, prefix)
        return {**aggregated(prefix), "stack_up_s": round(up_s, 1)}
    finally:
        stack("down", environment)


def table(results: dict[int, dict], args) -> str:
    cores = os.cpu_count()
    head = (
        f"Locust, {args.users} users for {args.duration} a run, through nginx; "
        f"{args.workers_per_replica} gunicorn worker(s) a container; {cores} cores "
        f"({platform.processor() or platform.machine()}); engine {args.engine}.\n\n"
        "| API containers | requests/s | p50 ms | p95 ms | p99 ms | failed | stack up s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {n} | {r['rps']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
        f"| {r['failure_rate']:.2%} | {r['stack_up_s']:.0f} |"
        for n, r in sorted(results.items())
    ]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.loadtest_containers", description=__doc__
    )
    parser.add_argument("--containers", default=os.environ.get("LOAD_REPLICAS") or "1,2,4")
    parser.add_argument("--users", type=int, default=int(os.environ.get("USERS") or "16"))
    parser.add_argument("--duration", default=os.environ.get("DURATION") or "30s")
    parser.add_argument(
        "--workers-per-replica", type=int, default=int(os.environ.get("WORKERS_PER_REPLICA") or 1)
    )
    args = parser.parse_args(argv)
    engine = find(os.environ.get("CONTAINER_ENGINE") or None, STATE_DIR)
    args.engine = engine.name
    environment = {
        **os.environ,
        "STACK_PROJECT": PROJECT,
        "CONTAINER_ENGINE": engine.name,
        "LB_PORT": str(free_port()),
        "DASHBOARD_HOST_PORT": str(free_port()),
        "PROMETHEUS_HOST_PORT": str(free_port()),
        "GRAFANA_HOST_PORT": str(free_port()),
        "API_WORKERS": str(args.workers_per_replica),
        "NGINX_CONF": str(nginx_without_limits()),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = get_settings().reports_dir / f"loadtest-containers-{stamp}"
    out.mkdir(parents=True)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for count in [int(n) for n in args.containers.split(",")]:
                results[count] = run(count, args, environment, Path(folder))
                for path in Path(folder).glob(f"containers-{count}*"):
                    shutil.copy(path, out / path.name)
    finally:
        for volume in ("shared", "database"):
            engine.command("volume", "rm", "--force", f"{PROJECT}_{volume}", check=False)
    figure = plot(results, out / "containers.png", xlabel="API containers behind nginx")
    shutil.copy(figure, PROJECT_ROOT / "docs" / "loadtest-containers.png")
    record = {
        "cpus": os.cpu_count(),
        "engine": engine.name,
        "users": args.users,
        "duration": args.duration,
        "workers_per_replica": args.workers_per_replica,
        "results": {str(k): v for k, v in results.items()},
    }
    write_json_atomic(out / "summary.json", record)
    publish("loadtest-containers", record, table(results, args), MARKERS, DOCS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
