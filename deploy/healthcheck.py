#!/opt/venv/bin/python
"""The container's health: this container's API answers ``GET /health`` (on ``PORT``)."""

import os
import sys
import urllib.request

try:
    port = os.environ.get("PORT") or "8000"
    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4)
except Exception as error:  # refused, timed out or an HTTP error: unhealthy, and why
    print(f"unhealthy: {error}")
    sys.exit(1)
