"""Real gunicorn, two workers: upload, retrain under prediction load, hot reload, rollback."""

from __future__ import annotations

import io
import signal
import threading
import time
import zipfile
from datetime import datetime

import pytest
import requests
from conftest import TOKEN, wait_for
from PIL import Image

from imgclf.model import registry

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def worker_versions(url: str, tries: int = 60) -> dict[int, str]:
    """Ask /health until two different workers have answered; their pid -> version."""
    seen: dict[int, str] = {}
    for _ in range(tries):
        # a fresh connection each time, so that the kernel can hand it to either worker
        body = requests.get(f"{url}/health", timeout=10).json()
        if body["status"] != "ok":  # this worker is still loading its model
            time.sleep(0.2)
            continue
        seen[body["worker_pid"]] = body["model_version"]
        if len(seen) >= 2:
            break
    return seen


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("L", (20, 20), bytes((value * 11 + i) % 256 for i in range(400))).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def test_retrain_under_load_hot_reloads_every_worker_without_failures(server, project, tmp_path):
    url, process = server
    assert set(worker_versions(url).values()) == {"v0001"}

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for i in range(4):
            zipped.writestr(f"7/extra-{i}.png", png(i))
    uploaded = requests.post(
        f"{url}/upload-data", files={"zip": ("u.zip", archive.getvalue())}, headers=AUTH
    )
    assert uploaded.status_code == 201 and uploaded.json()["counts"]["accepted"] == 4

    image = next((project.test_dir / "4").glob("*.png")).read_bytes()
    answers: list[tuple[float, float, int, str | None]] = []  # (sent, received, status, version)
    stop = threading.Event()

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                sent = time.time()
                try:
                    response = session.post(
                        f"{url}/predict",
                        data=image,
                        headers={"Content-Type": "image/png"},
                        timeout=30,
                    )
                    version = response.json().get("model_version")
                    answers.append((sent, time.time(), response.status_code, version))
                except requests.RequestException as error:
                    answers.append((sent, time.time(), 0, str(error)))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        started = requests.post(
            f"{url}/retrain",
            json={"epochs": 1, "patience": 1, "tolerance": 0.2, "max_recall_drop": 1.0},
            headers=AUTH,
        )
        assert started.status_code == 202, started.text
        job_url = f"{url}/retrain/{started.json()['id']}"
        assert requests.post(f"{url}/retrain", json={}, headers=AUTH).status_code == 409
        deadline = time.time() + 300
        while (job := requests.get(job_url).json())["state"] in ("queued", "running"):
            assert time.time() < deadline, job
            time.sleep(1)
        assert job["state"] == "promoted", job
        new_version = job["result"]["version"]
        promoted_at = registry.pointer(project.models_dir)["changed_at"]
        changed = datetime.fromisoformat(promoted_at).timestamp()
        # keep predicting until every client has sent a request more than 2.5 s after it
        wait_for(
            lambda: len([a for a in answers if a[0] > changed + 2.5]) >= 3, 60, "late answers"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    promoted = datetime.fromisoformat(promoted_at).timestamp()
    failed = [a for a in answers if a[2] != 200]
    assert not failed, failed[:5]
    assert len(answers) > 20
    first_new = min((a[1] for a in answers if a[3] == new_version), default=None)
    print(f"first answer from {new_version}: {first_new and first_new - promoted:.2f} s after")
    late = [a for a in answers if a[0] > promoted + 2.0]
    assert late and all(a[3] == new_version for a in late), late[:5]
    assert set(worker_versions(url).values()) == {new_version}

    rolled = requests.post(f"{url}/model/rollback", headers=AUTH)
    assert rolled.status_code == 200 and rolled.json()["version"] == "v0001"
    rolled_at = time.time()
    wait_for(lambda: set(worker_versions(url).values()) == {"v0001"}, 30, "both on v0001")
    print(f"both workers served v0001 {time.time() - rolled_at:.2f} s after the rollback")
    versions = worker_versions(url)
    assert len(versions) == 2 and set(versions.values()) == {"v0001"}

    text = requests.get(f"{url}/metrics").text
    assert 'route="/predict",status="200"' in text
    assert 'imgclf_retrain_jobs{state="promoted"} 1.0' in text

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=40) == 0

    # no secret in anything the run wrote: logs, executed notebooks, reports, data, journal
    # (the API and the worker both held the admin token, as under make run)
    leaked = [
        path for path in tmp_path.rglob("*")
        if path.is_file() and TOKEN.encode() in path.read_bytes()
    ]  # fmt: skip
    assert list(tmp_path.rglob("*.ipynb")) and not leaked, leaked
