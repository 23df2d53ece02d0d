"""The stack in containers, checked the way the host tests check processes (``make
test-containers``; marker ``containers``; runs only with IMGCLF_TEST_CONTAINERS=1).

One stack for the module, from empty volumes, brought up by ``python -m devkit.stack up`` (what
``make stack-up`` runs) under its own project name and free ports: a prediction through nginx;
the hardening (non-root, no capabilities, read-only root with no write error in any log, no
secret in ``inspect`` or any process's environment); an upload and a retrain run by the worker
container, promoted and served by every API container within 30 s; an API container SIGKILLed
under load (at most 1 % of requests fail, the restart policy brings it back); the database
container restarted under load (no failed prediction, every answered one stored); then
``stack-down`` and ``stack-up`` keep the model, the uploads and the prediction rows.

CONTAINER_ENGINE picks the engine (default: the first that works); OFFLINE (default 1 here:
no image registry is needed) builds the images from the Debian mirror when they are missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import png, settled, wait_for
from dotenv import dotenv_values

from devkit.processes import free_port
from devkit.stack import __main__ as stack
from devkit.stack.engine import find
from imgclf.config import PROJECT_ROOT

pytestmark = [
    pytest.mark.containers,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("IMGCLF_TEST_CONTAINERS") != "1",
        reason="the container tier runs with make test-containers (IMGCLF_TEST_CONTAINERS=1)",
    ),
]
PROJECT = "imgclf-test"
OWN = ("api", "worker", "dashboard")  # the containers of the imgclf image that keep running
#: One client's predictions a second through nginx: under its per-client limit (20/s), so that
#: a failure counted is a failure of the stack, not a 429 of the limit.
PACE_PER_S = 12
WRITE_ERRORS = ("Read-only file system", "Errno 30", "PermissionError", "Permission denied")


class Stack:
    def __init__(self):
        self.engine = find(os.environ.get("CONTAINER_ENGINE") or None, stack.STATE_DIR)
        self.lb_port = free_port()
        self.environment = {
            **os.environ,
            "STACK_PROJECT": PROJECT,
            "OFFLINE": os.environ.get("OFFLINE", "1"),
            "REPLICAS": "2",
            "LB_PORT": str(self.lb_port),
            "DASHBOARD_HOST_PORT": str(free_port()),
            "PROMETHEUS_HOST_PORT": str(free_port()),
            "GRAFANA_HOST_PORT": str(free_port()),
            "STACK_TIMEOUT_S": "900",
        }
        self.url = f"http://127.0.0.1:{self.lb_port}"

    def run(self, action: str) -> float:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "devkit.stack", action], env=self.environment,
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        assert done.returncode == 0, f"stack {action}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
        return time.monotonic() - started

    def names(self, service: str | None = None) -> list[str]:
        names = self.engine.containers(PROJECT)
        return sorted(n for n in names if service is None or n.startswith(f"{PROJECT}-{service}-"))

    def exec(self, name: str, *command: str) -> subprocess.CompletedProcess:
        return self.engine.command("exec", name, *command, check=False)

    def health(self, name: str) -> dict:
        script = (
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:8000/health', timeout=5).read().decode())"
        )
        done = self.exec(name, "python", "-c", script)
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def sql(self, query: str) -> list[str]:
        database = self.names("db")[0]
        done = self.exec(database, "psql", "-U", "imgclf", "-d", "imgclf", "-At", "-c", query)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    def remove_volumes(self) -> None:
        for volume in ("shared", "database"):
            self.engine.command("volume", "rm", "--force", f"{PROJECT}_{volume}", check=False)


ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "containers"
FIRST_MODEL_FAILED = "the first model failed to train"


def keep_logs(deployed: Stack) -> None:
    """Every container's log, and the worker's training reports, into test-artifacts/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in deployed.names():
        (ARTIFACTS / f"{name}.log").write_text(deployed.engine.logs(name, lines=100_000))
    worker = deployed.names("worker")
    if worker:
        reports = ARTIFACTS / "reports"
        deployed.engine.command("cp", f"{worker[0]}:/srv/imgclf/shared/reports", str(reports),
                                check=False)  # fmt: skip


def first_model(deployed: Stack):
    """The first model's version once every API container serves it; fails at once, with the
    worker's log, when the worker says its training failed."""
    worker_log = deployed.engine.logs(deployed.names("worker")[0], lines=200)
    assert FIRST_MODEL_FAILED not in worker_log, worker_log[-6000:]
    return every_api_serves(deployed)


@pytest.fixture(scope="module")
def stack_up():
    deployed = Stack()
    deployed.run("down")
    deployed.remove_volumes()
    seconds = deployed.run("up")
    print(f"stack up from empty volumes in {seconds:.0f} s")
    try:
        yield deployed
    finally:
        keep_logs(deployed)
        deployed.run("down")
        deployed.remove_volumes()


@pytest.fixture(scope="module")
def running(stack_up):
    """The stack once the worker has trained the first model and every replica serves it (100 s
    on 2 cores); the worker's log is in the failure's message when it does not."""
    started = time.monotonic()
    try:
        wait_for(lambda: first_model(stack_up), 900, "every API container to serve a model")
    except AssertionError as error:
        log = stack_up.engine.logs(stack_up.names("worker")[0], lines=200)
        raise AssertionError(f"{error}\nworker's log:\n{log[-6000:]}") from None
    print(f"first model served {time.monotonic() - started:.0f} s after the stack was up")
    return stack_up


def token() -> str:
    return dotenv_values(PROJECT_ROOT / ".env")["IMGCLF_ADMIN_TOKEN"]


def every_api_serves(deployed: Stack, version: str | None = None):
    versions = {deployed.health(name).get("model_version") for name in deployed.names("api")}
    return (
        versions if None not in versions and (version is None or versions == {version}) else None
    )


def test_a_new_stack_trains_its_first_model_and_predicts_through_nginx(running):
    # the worker trained the first model (entrypoint; the fixture waited for it) and every
    # replica loaded it from the volume
    answer = requests.post(f"{running.url}/predict", files={"image": png(128)}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["label"] and answer.json()["prediction_id"]


def test_the_dashboard_container_logs_in_reaches_the_api_and_predicts(running, digits_dir):
    from test_dashboard import CHROMIUM, CHROMIUM_ARGS

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    image = next((digits_dir / "test" / "3").glob("*.png"))  # a digit: not "unlike any class"
    port = running.environment["DASHBOARD_HOST_PORT"]
    password = (PROJECT_ROOT / ".secrets" / "dashboard_password").read_text()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/app")  # Panel's login form first
        page.locator("input[name=username]").fill("admin")
        page.locator("input[name=password]").fill(password)
        page.locator("button[type=submit]").click()
        page.get_by_text("API: ok").wait_for(timeout=120_000)  # through nginx, from inside
        page.locator("input[type=file]").first.set_input_files(str(image))
        page.get_by_text("Predicted:").wait_for(timeout=60_000)
        browser.close()
    refused = requests.get(f"http://127.0.0.1:{port}/app", timeout=10)
    assert "/login" in refused.url and 'name="password"' in refused.text  # no password, no app


def test_the_containers_are_hardened_and_show_no_secret(running):
    secrets = list(stack.ensure_secrets(PROJECT_ROOT / ".env", PROJECT_ROOT / ".secrets").values())
    for name in running.names():
        details = running.engine.inspect(name)
        assert not any(secret in json.dumps(details) for secret in secrets), f"{name}: inspect"
        if not any(name.startswith(f"{PROJECT}-{service}-") for service in OWN):
            continue
        assert details["HostConfig"]["ReadonlyRootfs"] is True, name
        user = running.exec(name, "id", "-u").stdout.strip()
        assert user not in ("", "0"), f"{name} runs as {user!r}"
        status = running.exec(name, "cat", "/proc/1/status").stdout
        assert "CapEff:\t0000000000000000" in status, f"{name}: {status}"
        probe = running.exec(name, "touch", "/probe")
        assert probe.returncode != 0 and "Read-only" in probe.stderr, name
        # a process may end while the glob is read: its file is skipped, not an error
        environ = running.exec(name, "sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null; true")
        assert environ.returncode == 0 and environ.stdout, name
        assert not any(secret in environ.stdout for secret in secrets), f"{name}: environ"
    for name in running.names():
        logs = running.engine.logs(name, lines=100_000)
        assert not [e for e in WRITE_ERRORS if e in logs], f"{name}: {logs[-2000:]}"


def test_an_upload_is_retrained_by_the_worker_and_served_by_every_replica(running):
    auth = {"Authorization": f"Bearer {token()}"}
    uploaded = requests.post(
        f"{running.url}/upload-data", headers=auth, data={"label": "3"},
        files={"files": ("new.png", png(200))}, timeout=30,
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text
    job = requests.post(
        f"{running.url}/retrain", headers=auth,
        json={"epochs": 1, "tolerance": 0.2, "max_recall_drop": 1.0}, timeout=30,
    )  # fmt: skip
    assert job.status_code == 202, job.text
    job_url = f"{running.url}/retrain/{job.json()['id']}"
    done = wait_for(lambda: settled(requests.get(job_url, timeout=10).json()), 600, "the retrain")
    assert done["state"] == "promoted", done
    promoted = time.monotonic()
    new = done["result"]["version"]
    wait_for(lambda: every_api_serves(running, new), 30, f"every API container to serve {new}")
    print(f"every API container served {new} {time.monotonic() - promoted:.1f} s after the job")


def paced(url: str, stop: threading.Event, answers: list) -> None:
    image = png(90)
    with requests.Session() as session:
        while not stop.is_set():
            began = time.monotonic()
            try:
                response = session.post(f"{url}/predict", files={"image": image}, timeout=60)
                answers.append((response.status_code, response.json().get("prediction_id")))
            except (requests.RequestException, ValueError) as error:
                answers.append((0, repr(error)))
            time.sleep(max(0.0, 1 / PACE_PER_S - (time.monotonic() - began)))


def under_load(url: str, fault, each: int = 15 * PACE_PER_S) -> list[tuple[int, str]]:
    """``each`` paced predictions (about 15 s), ``fault()``, then ``each`` more."""
    stop, answers = threading.Event(), []
    client = threading.Thread(target=paced, args=(url, stop, answers))
    client.start()
    try:
        wait_for(lambda: len(answers) >= each, 120, "predictions before the fault")
        fault()
        wait_for(lambda: len(answers) >= 2 * each, 300, "predictions after the fault")
    finally:
        stop.set()
        client.join()
    return answers


def test_an_api_container_killed_under_load_fails_at_most_one_percent_and_comes_back(running):
    victim = running.names("api")[0]
    pid = running.engine.inspect(victim)["State"]["Pid"]
    answers = under_load(running.url, lambda: os.kill(pid, signal.SIGKILL))
    failed = [a for a in answers if a[0] != 200]
    print(f"{len(answers)} predictions, {victim} SIGKILLed: {len(failed)} failed {failed[:3]}")
    assert len(answers) >= 100 and len(failed) <= 0.01 * len(answers), failed[:5]
    restarted = wait_for(
        lambda: (s := running.engine.inspect(victim)["State"])["Running"] and s["Pid"] != pid,
        120, f"{victim} to be restarted",
    )  # fmt: skip
    assert restarted
    wait_for(lambda: running.health(victim).get("status") == "ok", 300, f"{victim} to be ready")


def test_the_database_restarted_under_load_loses_no_prediction(running):
    database = running.names("db")[0]
    answers = under_load(running.url, lambda: running.engine.command("restart", database))
    failed = [a for a in answers if a[0] != 200]
    print(f"{len(answers)} predictions, {database} restarted: {len(failed)} failed {failed[:3]}")
    assert len(answers) >= 100 and not failed, failed[:5]
    answered = {prediction_id for _, prediction_id in answers}
    stored = lambda: answered - set(running.sql("SELECT id FROM predictions"))  # noqa: E731
    wait_for(lambda: not stored(), 120, "every answered prediction in the database")


def test_stack_down_and_up_keep_the_model_uploads_and_predictions(running):
    before = every_api_serves(running)
    rows = running.sql("SELECT count(*) FROM predictions")
    uploads = listing(running)
    running.run("down")
    assert running.names() == []
    seconds = running.run("up")
    print(f"stack up again in {seconds:.0f} s")
    assert every_api_serves(running) == before
    assert int(running.sql("SELECT count(*) FROM predictions")[0]) >= int(rows[0]) > 0
    assert listing(running) == uploads and len(uploads) > 1


def listing(deployed: Stack) -> list[str]:
    api = deployed.names("api")[0]
    return sorted(deployed.exec(api, "ls", "-R", "/srv/imgclf/shared/data/uploads").stdout.split())
