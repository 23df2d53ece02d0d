"""The deployed topology on one machine: PostgreSQL, two API replicas, a worker, nginx.

Uploads and retrains through the load balancer, sees every replica serve the promoted
version, kills a replica under load with no failed request, and SIGKILLs the worker mid-job.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import threading

import pytest
import requests
from conftest import TOKEN, wait_for
from PIL import Image

from devkit.cluster import Cluster
from imgclf.model import registry

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "cluster-db-secret"


@pytest.fixture
def cluster(project, postgres_server):  # postgres_server: skip (or fail in CI) without it
    if shutil.which("nginx") is None:
        if os.environ.get("IMGCLF_REQUIRE_POSTGRES"):
            pytest.fail("the cluster test needs nginx (apt-get install nginx)")
        pytest.skip("needs Debian's nginx (apt-get install nginx)")
    # the flood below is one client: nginx's per-client limits are tested in test_deployment
    with Cluster(
        project, replicas=2, admin_token=TOKEN, rate_limits=False, database_password=PASSWORD
    ) as running:
        yield running


def finished(url: str, job_id: str):
    job = requests.get(f"{url}/retrain/{job_id}", timeout=10).json()
    return job if job["state"] not in ("queued", "running") else None


def serves(url: str) -> str:
    return requests.get(f"{url}/health", timeout=5).json()["model_version"]


def progress(url: str, job_id: str) -> dict:
    return requests.get(f"{url}/retrain/{job_id}", timeout=10).json()["progress"]


def flood(url: str, image: bytes, stop: threading.Event, outcomes: list) -> None:
    session = requests.Session()
    while not stop.is_set():
        try:
            response = session.post(f"{url}/predict", files={"image": image}, timeout=30)
            outcomes.append(response.status_code)
        except requests.RequestException as error:
            outcomes.append(repr(error))


def test_cluster_uploads_retrains_survives_a_dead_replica_and_a_dead_worker(cluster, project):
    url = cluster.url
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 200).save(buffer, format="PNG")
    uploaded = requests.post(
        f"{url}/upload-data", headers=AUTH, data={"label": "3"},
        files={"files": ("new.png", buffer.getvalue())}, timeout=30,
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text

    job = requests.post(
        f"{url}/retrain",
        headers=AUTH,
        json={"epochs": 1, "tolerance": 0.2, "max_recall_drop": 1.0},
    )
    assert job.status_code == 202, job.text
    done = wait_for(lambda: finished(url, job.json()["id"]), 300, "the retrain")
    assert done["state"] == "promoted" and done["host"], done
    new = done["result"]["version"]
    for replica in cluster.api_urls:  # each replica polls the shared registry pointer
        wait_for(lambda r=replica: serves(r) == new, 30, f"{replica} to serve {new}")

    image = next((project.test_dir / "3").glob("*.png")).read_bytes()
    stop, outcomes = threading.Event(), []
    clients = [threading.Thread(target=flood, args=(url, image, stop, outcomes)) for _ in range(4)]
    for client in clients:
        client.start()
    wait_for(lambda: len(outcomes) >= 25, 60, "predictions through nginx")
    cluster.kill_replica(0)
    killed_at = len(outcomes)
    wait_for(lambda: len(outcomes) >= killed_at + 50, 60, "predictions after the kill")
    stop.set()
    for client in clients:
        client.join()
    failures = [o for o in outcomes if o != 200]
    print(f"{len(outcomes)} predictions through nginx, one replica killed: {failures[:5]}")
    assert len(outcomes) > 50 and not failures

    long_job = requests.post(f"{url}/retrain", headers=AUTH, json={"epochs": 60, "patience": 60})
    job_id = long_job.json()["id"]
    wait_for(lambda: progress(url, job_id).get("epoch"), 180, "the second job's first epoch")
    cluster.worker.send_signal(signal.SIGKILL)
    killed = wait_for(lambda: finished(url, job_id), 60, "the killed worker's job to fail")
    assert killed["state"] == "failed" and "worker" in killed["error"]
    assert registry.current_version(project.models_dir) == new

    # neither the admin token nor the database's password in anything the cluster wrote:
    # its processes' logs, the reports with executed notebooks, the data, the journal
    written = [p for root in (cluster.folder, project.project_root) for p in root.rglob("*")]
    leaked = [
        path for path in written
        if path.is_file() and any(s.encode() in path.read_bytes() for s in (TOKEN, PASSWORD))
    ]  # fmt: skip
    assert list(project.reports_dir.rglob("*.ipynb")) and not leaked, leaked
