#!/opt/venv/bin/python
"""The container's health: this container's API answers (on ``PORT``).

``imgclf-healthcheck`` (liveness): ``GET /health`` answers at all. ``imgclf-healthcheck
--ready`` (readiness, and compose's health): ``GET /ready`` answers 200, which it does once
every worker has its model loaded, converted and every path compiled (explanations included),
so that a load balancer sends it only requests it answers at full speed ("no-model" is ready:
it answers every other endpoint).
"""

import json
import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("PORT") or "8000"
path = "/ready" if "--ready" in sys.argv[1:] else "/health"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as answer:
        json.load(answer)
except urllib.error.HTTPError as error:  # /ready's 503: the message says what it waits for
    try:
        print(json.load(error).get("message") or f"not ready: HTTP {error.code}")
    except ValueError:
        print(f"unhealthy: HTTP {error.code}")
    sys.exit(1)
except Exception as error:  # refused, timed out: unhealthy, and why
    print(f"unhealthy: {error}")
    sys.exit(1)
