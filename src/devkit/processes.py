"""Helpers for starting the service's processes: the gunicorn command, a free port, waiting."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable

import requests

#: The API under gunicorn, configured by ``serve/gunicorn_conf.py`` (settings: environment).
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:serve.gunicorn_conf"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(
    process: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.3
) -> bool:
    """Call ``ready`` until it is true; False if the process exits or time runs out first.

    Connection errors from ``ready`` count as "not yet".
    """
    deadline = time.time() + timeout_s
    while True:
        try:
            if ready():
                return True
        except requests.RequestException:
            pass
        if process.poll() is not None or time.time() > deadline:
            return False
        time.sleep(poll_s)
