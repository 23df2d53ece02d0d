"""Start the API (gunicorn), a job worker and the dashboard (Panel): what ``make run`` ends with.

``python -m devkit.launch [--no-dashboard]``. Host and ports come from
``imgclf.config.get_server_settings`` (``HOST``, ``PORT`` 8000, ``DASHBOARD_PORT`` 5006).
Ctrl-C (or SIGTERM) stops both; if one of them exits, the other is stopped too, so nothing is
left running half.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from devkit.processes import GUNICORN
from imgclf.config import PROJECT_ROOT, get_server_settings

ENV_FILE = PROJECT_ROOT / ".env"
TOKEN_VARIABLE = "IMGCLF_ADMIN_TOKEN"


def ensure_token(env_file: Path = ENV_FILE) -> str:
    """Return the admin token from ``.env``, writing a new random one there on first use."""
    from dotenv import dotenv_values

    values = dotenv_values(env_file) if env_file.is_file() else {}
    if values.get(TOKEN_VARIABLE):
        return values[TOKEN_VARIABLE]
    token = secrets.token_urlsafe(24)
    lines = env_file.read_text().splitlines() if env_file.is_file() else []
    lines.append(f"{TOKEN_VARIABLE}={token}")
    temporary = env_file.with_name(f".{env_file.name}.tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.chmod(0o600)
    os.replace(temporary, env_file)
    return token


def _commands(with_dashboard: bool, with_worker: bool) -> dict[str, list[str]]:
    commands = {"api": GUNICORN}
    if with_worker:
        commands["worker"] = [sys.executable, "-m", "imgclf.cli", "worker"]
    if with_dashboard:
        commands["dashboard"] = [sys.executable, "-m", "dashboard"]
    return commands


def _wait(processes: dict[str, subprocess.Popen]) -> int:
    """Run until Ctrl-C, SIGTERM or one process exits; then stop them all."""

    def stop(*_):
        for process in processes.values():
            if process.poll() is None:
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(process.poll() is None for process in processes.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stop()
    for process in processes.values():
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
    return max((process.returncode or 0) for process in processes.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.launch", description=__doc__)
    parser.add_argument("--no-dashboard", action="store_true", help="leave the dashboard out")
    parser.add_argument(
        "--no-worker",
        action="store_true",
        default=os.environ.get("WORKER", "1") == "0",
        help="leave the job worker out (as a replica in a cluster); also WORKER=0",
    )
    args = parser.parse_args(argv)
    server = get_server_settings()
    token = ensure_token()
    env = {**os.environ, TOKEN_VARIABLE: os.environ.get(TOKEN_VARIABLE) or token}
    env.setdefault("IMGCLF_API_URL", server.api_url)
    processes = {
        name: subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
        for name, command in _commands(not args.no_dashboard, not args.no_worker).items()
    }
    api = server.api_url
    print(f"\n  API:        {api}   (docs: {api}/docs, health: {api}/health)")
    if "dashboard" in processes:
        print(f"  dashboard:  http://{server.host}:{server.dashboard_port}/app")
    print(f"  reports:    {api}/reports/")
    if "worker" not in processes:
        print("  no job worker here: retrain jobs wait for `imgclf worker` elsewhere")
    print(f"  admin token: {TOKEN_VARIABLE} in {ENV_FILE}")
    print("  Ctrl-C stops everything.\n", flush=True)
    return _wait(processes)


if __name__ == "__main__":
    sys.exit(main())
