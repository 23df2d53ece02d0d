#!/opt/venv/bin/python
"""The container's health: this container's API answers ``GET /health`` (on ``PORT``).

``imgclf-healthcheck`` (liveness): the API answers at all. ``imgclf-healthcheck --ready``
(readiness, and compose's health): it answers and is not still loading its model, so a load
balancer may send it predictions ("no-model" is ready: it answers every other endpoint).
"""

import json
import os
import sys
import urllib.request

try:
    port = os.environ.get("PORT") or "8000"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as answer:
        status = json.load(answer).get("status")
    if "--ready" in sys.argv[1:] and status == "loading":
        print("not ready: the model is loading")
        sys.exit(1)
except Exception as error:  # refused, timed out or an HTTP error: unhealthy, and why
    print(f"unhealthy: {error}")
    sys.exit(1)
