"""Real gunicorn, two workers and a job worker, as under ``make run``: an upload retrained
under prediction load and promoted, hot reload in every worker, rollback, the metrics, a clean
SIGTERM, and no secret in anything the run wrote.

One scenario for the module (``retrained``: a retrain costs a minute); each test checks one
thing it must show, in the order they happen.
"""

from __future__ import annotations

import io
import signal
import threading
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import requests
from conftest import (
    TOKEN,
    make_project,
    png,
    running_server,
    running_worker,
    settled,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from imgclf.model import registry

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 3  # threads predicting while the retrain runs
#: Hot reload: every worker polls the pointer every 0.5 s (IMGCLF_RELOAD_POLL_S) and loads in
#: the background; a request sent 2.0 s after the promotion must get the new version.
RELOADED_WITHIN_S = 2.0


def worker_versions(url: str) -> dict[int, str]:
    """Ask /health until two different workers have answered; their pid -> version."""
    seen: dict[int, str] = {}

    def both_answered() -> bool:
        # a fresh connection each time, so that the kernel can hand it to either worker
        body = requests.get(f"{url}/health", timeout=10).json()
        if body["status"] == "ok":  # not still loading its model
            seen[body["worker_pid"]] = body["model_version"]
        return len(seen) >= 2

    wait_for(both_answered, 30, "both gunicorn workers to answer /health")
    return seen


@dataclass
class Scenario:
    url: str
    process: object
    folder: Path
    models_dir: Path
    new_version: str = ""
    promoted_at: float = 0.0
    #: (sent, received, HTTP status or 0, model version or the error)
    answers: list[tuple[float, float, int, str | None]] = field(default_factory=list)


def predict_until(scenario: Scenario, image: bytes, stop: threading.Event) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            sent = time.time()
            try:
                response = session.post(
                    f"{scenario.url}/predict",
                    data=image,
                    headers={"Content-Type": "image/png"},
                    timeout=30,
                )
                version = response.json().get("model_version")
                scenario.answers.append((sent, time.time(), response.status_code, version))
            except requests.RequestException as error:
                scenario.answers.append((sent, time.time(), 0, str(error)))


def upload_four_sevens(url: str) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for i in range(4):
            zipped.writestr(f"7/extra-{i}.png", png(i))
    uploaded = requests.post(
        f"{url}/upload-data", files={"zip": ("u.zip", archive.getvalue())}, headers=AUTH
    )
    assert uploaded.status_code == 201 and uploaded.json()["counts"]["accepted"] == 4


def retrain_under_load(scenario: Scenario, image: bytes) -> None:
    """Start a retrain while CLIENTS threads predict; wait for its promotion, then until every
    client has sent a request more than 2.5 s after it."""
    url = scenario.url
    stop = threading.Event()
    threads = [
        threading.Thread(target=predict_until, args=(scenario, image, stop))
        for _ in range(CLIENTS)
    ]
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
        job = wait_for(lambda: settled(requests.get(job_url).json()), 300, "the retrain job")
        assert job["state"] == "promoted", job
        scenario.new_version = job["result"]["version"]
        changed_at = registry.pointer(scenario.models_dir)["changed_at"]
        scenario.promoted_at = datetime.fromisoformat(changed_at).timestamp()
        late = scenario.promoted_at + 2.5
        wait_for(
            lambda: len([a for a in scenario.answers if a[0] > late]) >= CLIENTS,
            60,
            "answers sent 2.5 s after the promotion",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@pytest.fixture(scope="module")
def retrained(trained_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gunicorn")
    project = make_project(trained_root, folder, f"sqlite:///{folder / 'imgclf.db'}")
    with running_worker(project, folder), running_server(project, folder) as (url, process):
        assert set(worker_versions(url).values()) == {"v0001"}
        upload_four_sevens(url)
        scenario = Scenario(url, process, folder, project.models_dir)
        image = next((project.test_dir / "4").glob("*.png")).read_bytes()
        retrain_under_load(scenario, image)
        yield scenario


def test_no_prediction_fails_while_a_retrain_is_trained_and_promoted(retrained):
    failed = [a for a in retrained.answers if a[2] != 200]
    assert not failed, failed[:5]
    assert len(retrained.answers) > 20


def test_every_worker_serves_the_promoted_version_within_two_seconds(retrained):
    new = retrained.new_version
    first_new = min((a[1] for a in retrained.answers if a[3] == new), default=None)
    print(f"first answer from {new}: {first_new and first_new - retrained.promoted_at:.2f} s")
    late = [a for a in retrained.answers if a[0] > retrained.promoted_at + RELOADED_WITHIN_S]
    assert late and all(a[3] == new for a in late), late[:5]
    assert set(worker_versions(retrained.url).values()) == {new}


def test_a_rollback_reaches_both_workers(retrained):
    url = retrained.url
    rolled = requests.post(f"{url}/model/rollback", headers=AUTH)
    assert rolled.status_code == 200 and rolled.json()["version"] == "v0001"
    rolled_at = time.time()
    wait_for(lambda: set(worker_versions(url).values()) == {"v0001"}, 30, "both on v0001")
    print(f"both workers served v0001 {time.time() - rolled_at:.2f} s after the rollback")
    assert len(worker_versions(url)) == 2

    def serving() -> dict[str, float]:  # summed over the live workers, whichever is scraped
        return {
            sample.labels["version"]: sample.value
            for family in text_string_to_metric_families(requests.get(f"{url}/metrics").text)
            for sample in family.samples
            if sample.name == "imgclf_workers_serving" and sample.labels["runtime"] == "jax"
        }

    wait_for(lambda: serving().get("v0001") == 2.0, 10, "the metric counting both on v0001")
    assert serving()[retrained.new_version] == 0.0


def test_the_metrics_count_the_predictions_and_the_promoted_job(retrained):
    text = requests.get(f"{retrained.url}/metrics").text
    assert 'route="/predict",status="200"' in text
    assert 'imgclf_retrain_jobs{state="promoted"} 1.0' in text


def test_sigterm_ends_gunicorn_cleanly(retrained):
    retrained.process.send_signal(signal.SIGTERM)
    assert retrained.process.wait(timeout=40) == 0


def test_nothing_the_run_wrote_holds_the_admin_token(retrained):
    # logs, executed notebooks, reports, data, journal: the API and the worker both held the
    # admin token, as under make run
    written = [path for path in retrained.folder.rglob("*") if path.is_file()]
    assert [path for path in written if path.suffix == ".ipynb"], "the retrain wrote no notebook"
    leaked = [path for path in written if TOKEN.encode() in path.read_bytes()]
    assert not leaked, leaked
