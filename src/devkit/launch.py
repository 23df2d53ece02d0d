"""Start the API (gunicorn), a job worker and the dashboard (Panel): what ``make run`` ends with.

``python -m devkit.launch [--no-dashboard]``. Host and ports come from
``imgclf.config.get_server_settings`` (``HOST``, ``PORT`` 8000, ``DASHBOARD_PORT`` 5006).
Ctrl-C (or SIGTERM) stops them all. One that exits on its own (a crash) is started again and
the launcher says so, at most ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S``; past that
everything is stopped, so nothing is left running half.
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
    return ensure_secret(TOKEN_VARIABLE, env_file)


def ensure_secret(variable: str, env_file: Path = ENV_FILE) -> str:
    """Return ``variable`` from ``.env``, writing a new random value there on first use.

    The file is rewritten through a temporary file that is the owner's only from its creation
    (mode 600), then renamed: it is never readable by others, nor half-written.
    """
    from dotenv import dotenv_values

    values = dotenv_values(env_file) if env_file.is_file() else {}
    if values.get(variable):
        return values[variable]
    value = secrets.token_urlsafe(24)
    lines = env_file.read_text().splitlines() if env_file.is_file() else []
    lines.append(f"{variable}={value}")
    temporary = env_file.with_name(f".{env_file.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write("\n".join(lines) + "\n")
    os.replace(temporary, env_file)
    return value


def _commands(with_dashboard: bool, with_worker: bool) -> dict[str, list[str]]:
    commands = {"api": GUNICORN}
    if with_worker:
        commands["worker"] = [sys.executable, "-m", "imgclf.cli", "worker"]
    if with_dashboard:
        commands["dashboard"] = [sys.executable, "-m", "dashboard"]
    return commands


#: A process that exits is started again, at most this many times within RESTART_WINDOW_S;
#: past that, everything is stopped (it would only crash again).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0


def say(message: str) -> None:
    print(f"launch: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Starts the processes, restarts one that exits (within limits, saying so), and stops
    them all on Ctrl-C or SIGTERM."""

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]):
        self.commands, self.env = commands, env
        self.processes = {name: self._start(name) for name in commands}
        self.restarts: dict[str, list[float]] = {name: [] for name in commands}
        self.stopping = False

    def _start(self, name: str) -> subprocess.Popen:
        return subprocess.Popen(self.commands[name], cwd=PROJECT_ROOT, env=self.env)

    def stop(self, *_) -> None:
        self.stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()

    def check(self, now: float) -> int | None:
        """Restart what exited; returns an exit status when everything must stop."""
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None or self.stopping:
                continue
            recent = [t for t in self.restarts[name] if now - t < RESTART_WINDOW_S]
            if len(recent) >= MAX_RESTARTS:
                say(
                    f"{name} exited (status {code}) {MAX_RESTARTS + 1} times within "
                    f"{RESTART_WINDOW_S:.0f} s; stopping everything"
                )
                return code or 1
            self.restarts[name] = [*recent, now]
            say(
                f"{name} exited (status {code}); starting it again ({len(recent) + 1} of "
                f"{MAX_RESTARTS} restarts within {RESTART_WINDOW_S:.0f} s)"
            )
            self.processes[name] = self._start(name)
        return None

    def run(self) -> int:
        """Until Ctrl-C, SIGTERM or too many restarts; then stop them all."""
        signal.signal(signal.SIGTERM, self.stop)
        status = 0
        try:
            while not self.stopping:
                if (status := self.check(time.monotonic())) is not None:
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        self.stop()
        for process in self.processes.values():
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
        return status or max((process.returncode or 0) for process in self.processes.values())


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
    supervisor = Supervisor(_commands(not args.no_dashboard, not args.no_worker), env)
    processes = supervisor.processes
    api = server.api_url
    print(f"\n  API:        {api}   (docs: {api}/docs, health: {api}/health)")
    if "dashboard" in processes:
        print(f"  dashboard:  http://{server.host}:{server.dashboard_port}/app")
    print(f"  reports:    {api}/reports/")
    if "worker" not in processes:
        print("  no job worker here: retrain jobs wait for `imgclf worker` elsewhere")
    print(f"  admin token: {TOKEN_VARIABLE} in {ENV_FILE}")
    print("  Ctrl-C stops everything.\n", flush=True)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
