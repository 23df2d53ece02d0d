"""``make cluster REPLICAS=4``: the deployed topology on one machine, without containers.

A PostgreSQL server (Debian's package) in a temporary folder, N API replicas (gunicorn) on
loopback ports sharing the models, data and reports folders, one job worker, and nginx in
front (``least_conn``; a request whose replica fails is retried on the next one). Prints the
URLs and runs until Ctrl-C, then stops everything it started. The load test and the
integration test use the same ``Cluster``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests

from devkit.postgres import TemporaryPostgres
from devkit.processes import GUNICORN, free_port, wait_until_ready
from imgclf import config
from imgclf.store import migrations

NGINX_CONF = """{user}worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    client_max_body_size {max_body_mb}m;
{zones}
    upstream api {{
        least_conn;
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_read_timeout 300s;
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries 3;
        location / {{ proxy_pass http://api; }}
        # a prediction has no effect but its log line: safe to send again to another replica
        location /predict {{
{limit_predict}
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_pass http://api;
        }}
        location /feedback {{
{limit_feedback}
            proxy_pass http://api;
        }}
        location /upload-data {{
{limit_uploads}
            proxy_pass http://api;
        }}
    }}
}}
"""

#: Per-client rate limits (by address), the same as deploy/nginx/nginx.conf's (a test keeps
#: them equal): beyond them nginx answers 429 before any replica does work.
RATE_ZONES = """\
    limit_req_zone $binary_remote_addr zone=predict:10m rate=20r/s;
    limit_req_zone $binary_remote_addr zone=feedback:10m rate=2r/s;
    limit_req_zone $binary_remote_addr zone=uploads:10m rate=1r/s;
    limit_req_status 429;"""
RATE_LIMITS = {
    "limit_predict": "            limit_req zone=predict burst=40 nodelay;",
    "limit_feedback": "            limit_req zone=feedback burst=10 nodelay;",
    "limit_uploads": "            limit_req zone=uploads burst=5 nodelay;",
}


def nginx_conf(
    folder: Path, port: int, replica_ports: list[int], max_body_mb: int, rate_limits: bool = True
) -> str:
    """nginx's configuration for a load balancer on ``port`` in front of the replicas; without
    ``rate_limits`` (a load test sends everything from one address) no per-client limit."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in replica_ports
    )
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    limits = RATE_LIMITS if rate_limits else dict.fromkeys(RATE_LIMITS, "")
    return NGINX_CONF.format(
        user=user,
        folder=folder,
        port=port,
        servers=servers,
        max_body_mb=max_body_mb,
        zones=RATE_ZONES if rate_limits else "",
        **limits,
    )


class Cluster:
    """PostgreSQL, N gunicorn replicas, one worker and nginx; a context manager."""

    def __init__(
        self,
        settings: config.Settings,
        replicas: int = 2,
        workers_per_replica: int = 1,
        with_worker: bool = True,
        admin_token: str = "",
        folder: Path | None = None,
        rate_limits: bool = True,
        database_password: str | None = None,
    ):
        self.settings, self.replicas, self.rate_limits = settings, replicas, rate_limits
        self.database_password = database_password  # in the URL (the server trusts loopback)
        self.workers_per_replica, self.with_worker = workers_per_replica, with_worker
        self.admin_token = admin_token or (os.environ.get("IMGCLF_ADMIN_TOKEN") or "")
        self.folder = folder or Path(tempfile.mkdtemp(prefix="imgclf-cluster-"))
        self.postgres = TemporaryPostgres()
        self.api: list[subprocess.Popen] = []
        self.api_urls: list[str] = []
        self.worker: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.url = ""

    def _environment(self, **more) -> dict[str, str]:
        return {
            **os.environ,
            **self.settings.as_environment(),
            "IMGCLF_ADMIN_TOKEN": self.admin_token,
            "ACCESS_LOG": "",
            "TRUSTED_PROXIES": "1",  # behind nginx: the client is the address nginx saw
            **more,
        }

    def _start(self, name: str, command: list[str], **env) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:  # the child keeps its own copy
            return subprocess.Popen(
                command, env=self._environment(**env), stdout=log, stderr=subprocess.STDOUT
            )

    def start_replica(self, index: int) -> None:
        port = free_port()
        metrics = self.folder / f"metrics-{index}"
        metrics.mkdir(exist_ok=True)
        process = self._start(
            f"api-{index}",
            GUNICORN,
            PORT=str(port),
            WORKERS=str(self.workers_per_replica),
            PROMETHEUS_MULTIPROC_DIR=str(metrics),
        )
        self.api.append(process)
        self.api_urls.append(f"http://127.0.0.1:{port}")

    def start(self) -> Cluster:
        self.postgres.start()
        url = self.postgres.create_database("imgclf")
        if self.database_password:  # a URL with a password, as deployed (it must never leak)
            url = url.replace("://postgres@", f"://postgres:{self.database_password}@", 1)
        self.settings = replace(self.settings, database_url=url)
        migrations.upgrade(url)
        for index in range(self.replicas):
            self.start_replica(index)
        if self.with_worker:
            self.worker = self._start("worker", [sys.executable, "-m", "imgclf.cli", "worker"])
        port = free_port()
        conf = self.folder / "nginx.conf"
        limit = config.get_service_settings().max_request_bytes // (1024 * 1024)
        ports = [int(u.rsplit(":", 1)[1]) for u in self.api_urls]
        conf.write_text(nginx_conf(self.folder, port, ports, limit, self.rate_limits))
        with open(self.folder / "nginx.log", "w") as log:
            self.nginx = subprocess.Popen(
                ["nginx", "-p", str(self.folder), "-c", str(conf), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.url = f"http://127.0.0.1:{port}"
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout_s: float = 120) -> None:
        """Wait until every replica and the load balancer answer /health with a model."""
        for process, url in [*zip(self.api, self.api_urls, strict=True), (self.nginx, self.url)]:

            def healthy(url=url):
                return requests.get(f"{url}/health", timeout=5).json()["status"] == "ok"

            if not wait_until_ready(process, healthy, timeout_s):
                raise RuntimeError(f"{url} did not become healthy; logs in {self.folder}")

    def kill_replica(self, index: int) -> None:
        self.api[index].send_signal(signal.SIGKILL)
        self.api[index].wait()

    def stop(self) -> None:
        for process in [self.nginx, self.worker, *self.api]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [self.nginx, self.worker, *self.api]:
            if process is not None:
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.postgres.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.cluster", description=__doc__)
    parser.add_argument("--replicas", type=int, default=int(os.environ.get("REPLICAS") or "2"))
    parser.add_argument(
        "--workers-per-replica", type=int, default=int(os.environ.get("WORKERS") or "1")
    )
    args = parser.parse_args(argv)
    from devkit.launch import ensure_token

    cluster = Cluster(
        config.get_settings(), args.replicas, args.workers_per_replica, admin_token=ensure_token()
    )
    with cluster:
        print(f"\n  load balancer: {cluster.url}   (nginx, least_conn)")
        for index, url in enumerate(cluster.api_urls):
            print(f"  replica {index}:     {url}")
        print(f"  database:      {cluster.settings.database_url}")
        print(f"  worker:        pid {cluster.worker.pid if cluster.worker else '-'}")
        print(f"  logs:          {cluster.folder}\n  Ctrl-C stops everything.\n", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            while all(p.poll() is None for p in [cluster.nginx, *cluster.api]):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
