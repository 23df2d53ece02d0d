"""The deployment's security rules: what compose publishes, which secrets it requires, how its
containers are hardened, nginx's per-client limits (checked with a real nginx), the dashboard's
login."""

from __future__ import annotations

import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import yaml
from conftest import wait_for

from dashboard.__main__ import login
from devkit.cluster import RATE_LIMITS, RATE_ZONES, nginx_conf
from devkit.processes import free_port
from devkit.stack import compose
from imgclf.config import PROJECT_ROOT, ConfigError, get_server_settings
from imgclf.config.readers import SECRET_NAMES

COMPOSE = PROJECT_ROOT / "compose.yaml"


def services() -> dict:
    return compose.load([COMPOSE], {})["services"]


def test_compose_publishes_only_the_load_balancer_beyond_the_loopback():
    for name, service in services().items():
        for port in service.get("ports", []):
            if name == "lb":
                continue
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
    assert services()["lb"]["ports"] == ["8080:8080"]  # LB_PORT, 8080 by default


def test_compose_defaults_no_secret():
    # secrets are files (tests/test_stack.py): none has a default in compose.yaml
    for service in yaml.safe_load(COMPOSE.read_text())["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAMES.search(key) and key != "DATABASE_URL":
                assert key.endswith("_FILE") or key.endswith("__FILE"), key
                assert str(value).startswith("/run/secrets/"), key
    grafana = services()["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_compose_hardens_the_api_worker_and_dashboard_containers():
    for name in ("api", "worker", "dashboard", "migrate"):
        service = services()[name]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        grace = service["stop_grace_period"]
        seconds = int(grace[:-1]) * (60 if grace.endswith("m") else 1)
        assert seconds > 30, f"{name}: {grace} is not longer than gunicorn's drain (30 s)"


def test_compose_nginx_has_the_same_per_client_limits_as_the_cluster():
    deployed = (PROJECT_ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    for line in [*RATE_ZONES.splitlines(), *RATE_LIMITS.values()]:
        assert line.strip() in deployed, line


class Answer(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the standard library's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_):
        pass


def test_nginx_answers_429_to_one_client_beyond_its_feedback_rate(tmp_path):
    if shutil.which("nginx") is None:
        pytest.skip("needs Debian's nginx (apt-get install nginx)")
    upstream = ThreadingHTTPServer(("127.0.0.1", free_port()), Answer)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, port, [upstream.server_port], 10))
    nginx = subprocess.Popen(
        ["nginx", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/predict"), 30, "nginx to start")
        codes = [requests.post(f"{url}/feedback", json={}).status_code for _ in range(30)]
        assert codes.count(201) <= 12 and codes.count(429) >= 15, codes  # 2/s, burst 10
        assert requests.post(f"{url}/predict", data=b"x").status_code == 201  # its own zone
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        upstream.shutdown()


def _answers(url: str) -> bool:
    try:
        return requests.post(url, data=b"x", timeout=2).status_code == 201
    except requests.RequestException:
        return False


def test_the_dashboard_needs_a_login_beyond_the_loopback(monkeypatch):
    monkeypatch.setenv("HOST", "127.0.0.1")
    assert login(get_server_settings()) == {}  # make run: this machine only
    monkeypatch.setenv("HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="DASHBOARD_PASSWORD"):
        login(get_server_settings())
    monkeypatch.setenv("DASHBOARD_PASSWORD", "open sesame")
    with pytest.raises(ConfigError, match="DASHBOARD_COOKIE_SECRET"):
        login(get_server_settings())
    monkeypatch.setenv("DASHBOARD_COOKIE_SECRET", "x" * 32)
    assert login(get_server_settings()) == {"basic_auth": "open sesame", "cookie_secret": "x" * 32}
