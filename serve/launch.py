"""Start the API (gunicorn) and the dashboard (Panel) together: what ``make run`` ends with.

``python -m serve.launch [--no-dashboard]``. Ports come from ``PORT`` (8000) and
``DASHBOARD_PORT`` (5006). Ctrl-C (or SIGTERM) stops both; if one of them exits, the other is
stopped too, so nothing is left running half.
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

from imgclf.config import PROJECT_ROOT

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.launch", description=__doc__)
    parser.add_argument("--no-dashboard", action="store_true", help="start the API only")
    args = parser.parse_args(argv)
    token = ensure_token()
    env = {**os.environ, TOKEN_VARIABLE: os.environ.get(TOKEN_VARIABLE) or token}
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    dashboard_port = os.environ.get("DASHBOARD_PORT", "5006")
    api_url = f"http://{host}:{port}"
    commands = {
        "api": [sys.executable, "-m", "gunicorn", "-c", "serve/gunicorn.conf.py"],
    }
    dashboard = PROJECT_ROOT / "dashboard" / "app.py"
    if not args.no_dashboard and dashboard.is_file():
        commands["dashboard"] = [
            sys.executable,
            "-m",
            "panel",
            "serve",
            str(dashboard),
            "--port",
            dashboard_port,
            "--address",
            host,
            "--allow-websocket-origin",
            f"{host}:{dashboard_port}",
            "--allow-websocket-origin",
            f"localhost:{dashboard_port}",
        ]
        env.setdefault("IMGCLF_API_URL", api_url)
    processes = {
        name: subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
        for name, command in commands.items()
    }
    print(f"\n  API:        {api_url}   (docs: {api_url}/docs, health: {api_url}/health)")
    if "dashboard" in processes:
        print(f"  dashboard:  http://{host}:{dashboard_port}/app")
    print(f"  reports:    {api_url}/reports/")
    print(f"  admin token: {TOKEN_VARIABLE} in {ENV_FILE}")
    print("  Ctrl-C stops everything.\n", flush=True)

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


if __name__ == "__main__":
    sys.exit(main())
