"""The learning loop through the API with a real job worker: cancel, a killed kernel, the
per-class gate on a new class, feedback that becomes training data, automatic retraining, drift
and its metrics."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import TEST_SEED, png, wait_for
from PIL import Image
from test_worker import alive, children

from imgclf.config import PROJECT_ROOT
from imgclf.model import registry
from serve.app import create_app

TOKEN = "loop-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = ("promoted", "rejected", "failed", "cancelled")


@pytest.fixture
def client(project, monkeypatch):
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("IMGCLF_RELOAD_POLL_S", "0.1")
    return create_app(project).test_client()


def noise_png(seed: int) -> bytes:
    """A bright random-noise image: nothing like a digit, easy to learn as a class of its own."""
    return png(seed, size=20, darkest=150)


def upload(client, label: str, payloads: list[bytes]) -> dict:
    files = [(io.BytesIO(p), f"{label}{i}.png") for i, p in enumerate(payloads)]
    response = client.post("/upload-data", data={"files": files, "label": label}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def finished(client, job_id: str, timeout_s: float = 300) -> dict:
    return wait_for(
        lambda: (job := client.get(f"/retrain/{job_id}").get_json())["state"] in FINAL and job,
        timeout_s,
        f"job {job_id} to end",
    )


def training(client, job_id: str) -> dict:
    """Wait until a job's notebook is in its training loop (its kernel is busy)."""
    return wait_for(
        lambda: (
            (job := client.get(f"/retrain/{job_id}").get_json())["progress"].get("epoch") and job
        ),
        240,
        f"job {job_id} to train",
    )


def digits_across_classes(project, per_class: int) -> list[bytes]:
    return [
        path.read_bytes()
        for label in sorted(p.name for p in project.test_dir.iterdir())
        for path in sorted((project.test_dir / label).glob("*.png"))[:per_class]
    ]


@pytest.mark.slow
def test_cancel_a_running_job_then_a_killed_kernel_fails_then_the_next_job_runs(
    client, project, worker
):
    started = client.post("/retrain", json={"epochs": 80, "patience": 80}, headers=AUTH)
    job = started.get_json()
    assert job["trigger"] == "manual" and job["reason"] == "started by request"
    training(client, job["id"])
    kernels = children(worker.pid)
    assert kernels, "the notebook's kernel runs under the worker"
    assert client.post(f"/retrain/{job['id']}/cancel").status_code == 401
    asked = time.monotonic()
    cancelled = client.post(f"/retrain/{job['id']}/cancel", headers=AUTH)
    took = time.monotonic() - asked
    body = cancelled.get_json()
    print(f"cancelled in {took:.1f} s: {body['error']}")
    assert cancelled.status_code == 200 and body["state"] == "cancelled", body
    assert took <= 10 and "cancelled by request" in body["error"]
    wait_for(lambda: not any(alive(pid) for pid in kernels), 10, "the kernel to be gone")
    assert not children(worker.pid) and worker.poll() is None
    assert registry.list_versions(project.models_dir) == ["v0001"]
    assert registry.current_version(project.models_dir) == "v0001"
    again = client.post(f"/retrain/{job['id']}/cancel", headers=AUTH)
    assert again.status_code == 409 and "already ended: cancelled" in again.get_json()["message"]
    assert client.post("/retrain/nope/cancel", headers=AUTH).status_code == 404

    # a kernel that dies on its own fails the job, and is not run again
    second = client.post("/retrain", json={"epochs": 80, "patience": 80}, headers=AUTH)
    second = training(client, second.get_json()["id"])
    for pid in children(worker.pid):
        os.kill(pid, signal.SIGKILL)
    failed = finished(client, second["id"], 60)
    assert failed["state"] == "failed" and "kernel died while running" in failed["error"]
    assert not any("retrying" in line for line in failed["log_tail"])
    assert registry.list_versions(project.models_dir) == ["v0001"]

    third = client.post(
        "/retrain", json={"epochs": 1, "patience": 1, "tolerance": 0.2}, headers=AUTH
    )
    assert finished(client, third.get_json()["id"])["state"] in ("promoted", "rejected")


def test_cancel_a_queued_job_ends_it_at_once(client):
    job = client.post("/retrain", json={"epochs": 1}, headers=AUTH).get_json()
    response = client.post(f"/retrain/{job['id']}/cancel", headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["state"] == "cancelled"
    assert "before a worker started it" in response.get_json()["error"]
    assert client.post("/retrain", json={"epochs": 1}, headers=AUTH).status_code == 202


@pytest.mark.slow
@pytest.mark.training
def test_a_new_class_is_served_only_once_tested_and_feedback_becomes_training_data(
    client, project, worker
):
    """Margins: 14 bright-noise images, unlike any digit, repeated in training up to half the
    median class, are learned in 3 epochs (seeds 1, 2 and 3); the default gate blocks only a
    digit shown worse by paired tests, not one that lost an image or two."""
    first = upload(client, "probe", [noise_png(0)])
    assert first["accepted"][0]["split"] == "train"  # a class's first image trains
    fast = {
        "epochs": 3,
        "patience": 3,
        "tolerance": 0.2,
        "max_recall_drop": 1.0,
        "seed": TEST_SEED,
    }
    job = client.post("/retrain", json=fast, headers=AUTH).get_json()
    rejected = finished(client, job["id"])
    assert rejected["state"] == "rejected", rejected
    assert "'probe' needs 5 more" in rejected["result"]["reason"]
    assert "probe" in rejected["result"]["blocked"]
    audited = rejected["result"]["data_audit"]  # what the audit found in the data it trained on
    assert audited["leaks_held_out"] == 0 and {"label_issues", "outliers"} <= set(audited)
    assert registry.current_version(project.models_dir) == "v0001"

    more = upload(client, "probe", [noise_png(seed) for seed in range(1, 13)])
    tests = [row for row in more["accepted"] if row["split"] == "test"]
    assert len(tests) >= 5
    # feedback on a retained prediction turns into pending labelled data
    predicted = client.post("/predict", data=noise_png(99), content_type="image/png").get_json()
    client.application.extensions["imgclf"].keeper.flush()
    feedback = client.post(
        "/feedback",
        json={"prediction_id": predicted["prediction_id"], "label": "probe"},
        headers=AUTH,
    )
    assert feedback.status_code == 201, feedback.get_json()
    training_row = feedback.get_json()["training"]
    assert training_row["status"] == "added" and training_row["split"] in ("train", "test")
    summary = client.get("/data/summary").get_json()
    assert summary["uploads"]["probe"] == 14
    assert summary["uploads_test"]["probe"] == len(tests) + (training_row["split"] == "test")

    # the default gate (no class or overall drop shown beyond its margin, new classes at
    # least 0.5 recall): the class is learned from its few images because rare classes are
    # repeated (``balance``)
    default_gate = {"epochs": 3, "patience": 3, "seed": TEST_SEED}
    job = client.post("/retrain", json=default_gate, headers=AUTH).get_json()
    promoted = finished(client, job["id"])
    assert promoted["state"] == "promoted", promoted
    result = promoted["result"]
    assert result["uploads"] + result["uploaded_tests"] == 14  # the feedback image included
    info = client.get("/model").get_json()
    assert info["version"] == result["version"] and info["class_names"][-1] == "probe"
    assert (
        info["test_metrics"]["per_class"]["probe"]["support"] == summary["uploads_test"]["probe"]
    )


def altered(payload: bytes, seed: int) -> bytes:
    """The same image with noise of one grey level: other bytes, the same digit to a model (a
    systematic change, a shift or a darker copy, would be learned as what tells them apart)."""
    with Image.open(io.BytesIO(payload)) as image:
        pixels = np.asarray(image.convert("L"), dtype=int)
    noise = np.random.default_rng(seed).integers(-1, 2, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), mode="L").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.training
def test_a_class_harmed_by_mislabelled_uploads_is_rejected_and_named(client, project, worker):
    """Every training image of '3', slightly altered, uploaded as '8' (three times, each with
    other noise): the candidate is taught that a 3 is an '8', and the gate must say that '3'
    was harmed.

    Margin: uploaded once (as many '8' labels as '3' labels on the same look) the recall of
    '3' fell to 0.68 with seed 1 and not at all with seeds 2 and 3 after 3 epochs: a coin toss
    between two labels. Three to one, it fell from 1.0 to 0.16, 0.35 and 0.14 of 37 images
    with seeds 1, 2 and 3 (p at most 6e-8); a fall to 0.75 with none the other way would still
    have p = 0.5 ** 9, under the 0.05 / 11 level.
    """
    threes = sorted((project.data_dir / "train" / "3").glob("*.png"))
    assert len(threes) > 100
    for copy in (0, 1, 2):
        noisy = [altered(path.read_bytes(), 3 * i + copy) for i, path in enumerate(threes)]
        upload(client, "8", noisy)
    job = client.post(
        "/retrain", json={"epochs": 3, "patience": 3, "seed": TEST_SEED}, headers=AUTH
    ).get_json()
    rejected = finished(client, job["id"])
    assert rejected["state"] == "rejected", rejected["result"]
    result = rejected["result"]
    assert "3" in result["blocked"] and "'3': recall" in result["reason"], result["reason"]
    rows = {row["class"]: row for row in result["outcome"]["decision"]["comparisons"]}
    print({key: rows["3"][key] for key in ("n", "current_recall", "candidate_recall", "p_value")})
    assert rows["3"]["verdict"] == "worse" and rows["3"]["ci_high"] < 0
    assert registry.current_version(project.models_dir) == "v0001"


def test_feedback_errors_are_clear_and_the_review_queue_lists_unsure_predictions(client, project):
    images = digits_across_classes(project, 1)
    batch = client.post(
        "/predict/batch",
        data={"images": [(io.BytesIO(p), f"{i}.png") for i, p in enumerate(images)]},
    ).get_json()
    keeper = client.application.extensions["imgclf"].keeper
    keeper.flush()
    ids = [row["prediction_id"] for row in batch["predictions"]]
    queue = client.get("/review?limit=5", headers=AUTH).get_json()
    assert len(queue["items"]) == 5 and queue["classes"] == [str(d) for d in range(10)]
    confidences = [item["confidence"] for item in queue["items"]]
    assert confidences == sorted(confidences)
    assert queue["items"][0]["image"].startswith("data:image/png;base64,")
    assert client.get("/review").status_code == 401

    unsure = queue["items"][0]["id"]
    tokens = {row["prediction_id"]: row["feedback_token"] for row in batch["predictions"]}
    anonymous = client.post(
        "/feedback", json={"prediction_id": unsure, "label": "3", "feedback_token": tokens[unsure]}
    )
    assert anonymous.status_code == 201
    assert anonymous.get_json()["training"]["status"] == "not-used"
    queue = client.get("/review?limit=20", headers=AUTH).get_json()
    assert unsure not in [item["id"] for item in queue["items"]]  # reviewed: off the queue

    unknown = client.post("/feedback", json={"prediction_id": "nope", "label": "3"}, headers=AUTH)
    assert unknown.status_code == 404 and "nope" in unknown.get_json()["message"]
    refused = client.post("/feedback", json={"prediction_id": ids[1], "label": "../x"})
    assert refused.status_code == 422
    wrong = client.post(
        "/feedback",
        json={"prediction_id": ids[1], "label": "3"},
        headers={"Authorization": "Bearer wrong"},
    )
    assert wrong.status_code == 401
    digest = client.application.extensions["imgclf"].store.prediction(ids[2])["image_sha256"]
    keeper.path(digest).unlink()  # pruned
    gone = client.post("/feedback", json={"prediction_id": ids[2], "label": "3"}, headers=AUTH)
    assert gone.status_code == 410 and "no longer kept" in gone.get_json()["message"]
    assert not (project.data_dir / "uploads").exists()  # nothing was half-stored


def test_the_useful_review_order_asks_about_one_copy_of_a_doubt_not_six(client, project):
    """Six copies of one ambiguous image (a blend of a 3 and an 8) among ten digits: ordered by
    usefulness (smallest margins, spread over the features), the queue asks about at most one
    of the copies, whatever the model makes of the blend: copies lie at distance 0 from each
    other, so k-centre greedy never picks a second while a distinct image is left."""
    digits = digits_across_classes(project, 1)
    with Image.open(io.BytesIO(digits[3])) as three, Image.open(io.BytesIO(digits[8])) as eight:
        blend = Image.blend(three.convert("L"), eight.convert("L"), 0.5)
    buffer = io.BytesIO()
    blend.save(buffer, format="PNG")
    images = digits + [buffer.getvalue()] * 6
    batch = client.post(
        "/predict/batch",
        data={"images": [(io.BytesIO(p), f"{i}.png") for i, p in enumerate(images)]},
    ).get_json()
    client.application.extensions["imgclf"].keeper.flush()
    copies = {row["prediction_id"] for row in batch["predictions"][len(digits) :]}
    useful = client.get("/review?limit=5&order=useful", headers=AUTH)
    assert useful.status_code == 200, useful.get_json()
    picked = [item["id"] for item in useful.get_json()["items"]]
    plain = [
        item["id"] for item in client.get("/review?limit=5", headers=AUTH).get_json()["items"]
    ]
    print(f"copies among 5: useful {len(copies & set(picked))}, plain {len(copies & set(plain))}")
    assert len(picked) == 5 and len(copies & set(picked)) <= 1
    assert client.get("/review?order=random", headers=AUTH).status_code == 422


def darker(payload: bytes) -> bytes:
    """The image at a quarter of its brightness (inputs that drift)."""
    with Image.open(io.BytesIO(payload)) as image:
        pixels = (np.asarray(image, dtype=float) * 0.25).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_drift_needs_a_minimum_sample_and_flags_darker_inputs(client, project, monkeypatch):
    def predict(images):
        files = [(io.BytesIO(p), f"{i}.png") for i, p in enumerate(images)]
        assert client.post("/predict/batch", data={"images": files}).status_code == 200

    monkeypatch.setattr("serve.routes.loop.FEATURES_EVERY_S", 0.0)  # measured on every call
    assert client.get("/drift").get_json()["verdict"] == "not-enough-data"
    normal = digits_across_classes(project, 4)  # 40 images, every class
    predict(normal[:10])
    few = client.get("/drift").get_json()
    assert few["verdict"] == "not-enough-data" and few["production_count"] == 10
    assert "at least 30" in few["message"]
    predict(normal[10:])
    like_training = client.get("/drift").get_json()
    assert like_training["verdict"] == "no-drift", like_training
    assert like_training["features"]["brightness"]["p_value"] > like_training["threshold"]
    seen = like_training["model_features"]
    assert seen["production_count"] == 40 and seen["model_version"] == "v0001", seen
    assert not seen["drift"], seen  # under no shift, p < 0.01 / 7 has a chance of 0.14 %

    predict([darker(p) for p in normal])
    shifted = client.get("/drift").get_json()
    assert shifted["verdict"] == "drift" and "brightness" in shifted["drifted"], shifted
    seen = shifted["model_features"]
    print(f"model features: {like_training['model_features']} then {seen}")
    # measured: AUC 0.52 (p 0.36) on the 40 test digits, 0.77 (p 4e-8) once 40 of 80 are dark
    assert seen["production_count"] == 80 and seen["drift"], seen
    assert "model_features" in shifted["drifted"]
    assert (
        shifted["features"]["brightness"]["production_mean"]
        < (shifted["features"]["brightness"]["train_mean"])
    )
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "imgclf_drift_detected 1.0" in metrics
    assert 'imgclf_drift_p_value{test="brightness"}' in metrics


def test_drift_from_one_client_does_not_retrain_but_from_several_it_does(project, monkeypatch):
    """Anyone may send inputs; drift they cause alone must not retrain the model. With
    AUTO_RETRAIN_DRIFT_MIN_CLIENTS=3, darker inputs from one address leave the policy waiting
    (and say why); the same from three addresses make it due."""
    for name, value in {"IMGCLF_ADMIN_TOKEN": TOKEN, "AUTO_RETRAIN": "1",
                        "AUTO_RETRAIN_ON_DRIFT": "1", "AUTO_RETRAIN_DRIFT_MIN_CLIENTS": "3",
                        "AUTO_RETRAIN_MIN_INTERVAL_S": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    client = create_app(project).test_client()

    images = [darker(p) for p in digits_across_classes(project, 4)]

    def predict(address: str, chosen: list[bytes]) -> None:
        files = [(io.BytesIO(p), f"{i}.png") for i, p in enumerate(chosen)]
        sent = client.post("/predict/batch", data={"images": files},
                           environ_base={"REMOTE_ADDR": address})  # fmt: skip
        assert sent.status_code == 200

    predict("10.0.0.1", images)
    alone = client.get("/drift").get_json()
    assert alone["verdict"] == "drift" and alone["clients"] == 1, alone
    waiting = client.get("/policy").get_json()
    assert not waiting["due"] and "only 1 distinct client" in " ".join(waiting["waiting_for"])
    predict("10.0.0.2", images[:10])
    predict("10.0.0.3", images[10:20])
    several = client.get("/drift").get_json()
    assert several["verdict"] == "drift" and several["clients"] == 3, several
    due = client.get("/policy").get_json()
    assert due["due"] and "from 3 distinct clients" in due["reasons"][0], due


@pytest.mark.slow
def test_with_the_policy_on_enough_new_images_start_a_retrain_by_itself(
    client, project, tmp_path, monkeypatch
):
    policy_env = {
        "AUTO_RETRAIN": "1",
        "AUTO_RETRAIN_MIN_IMAGES": "3",
        "AUTO_RETRAIN_MIN_INTERVAL_S": "3600",
    }
    for name, value in policy_env.items():
        monkeypatch.setenv(name, value)
    client = create_app(project).test_client()
    before = client.get("/policy").get_json()
    assert before["enabled"] and not before["due"] and before["new_images"] == 0
    assert "0 of 3 new labelled images" in before["next"]
    log_path = tmp_path / "policy-worker.log"
    log = open(log_path, "w")
    worker = subprocess.Popen(  # LOG_LEVEL=debug: it logs each evaluation of the policy
        [sys.executable, "-m", "imgclf.cli", "worker"],
        env={**os.environ, **project.as_environment(), **policy_env, "LOG_LEVEL": "debug"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def evaluations(waiting_for: str = "") -> int:
        lines = log_path.read_text().splitlines()
        return sum("policy evaluated: not due" in line and waiting_for in line for line in lines)

    try:
        wait_for(evaluations, 60, "the worker's first evaluation of the policy")
        assert client.get("/jobs").get_json() == []  # it looked: nothing new, nothing started
        upload(client, "7", [noise_png(seed) for seed in range(3)])
        jobs = wait_for(lambda: client.get("/jobs").get_json(), 30, "an automatic job")
        job = jobs[0]
        assert job["trigger"] == "auto" and "3 new labelled images" in job["reason"], job
        after = client.get("/policy").get_json()
        assert not after["due"] and after["last_auto_job"] == job["id"]
        ended = client.post(f"/retrain/{job['id']}/cancel", headers=AUTH).get_json()
        assert ended["state"] == "cancelled"
        # the worker evaluates the policy again (every POLICY_EVERY_S) and waits for the interval
        interval = "AUTO_RETRAIN_MIN_INTERVAL_S"
        wait_for(lambda: evaluations(interval) >= 2, 60, "two evaluations held by the interval")
        assert len(client.get("/jobs").get_json()) == 1
        assert "AUTO_RETRAIN_MIN_INTERVAL_S" in " ".join(
            client.get("/policy").get_json()["waiting_for"]
        )
    finally:
        worker.kill()
        worker.wait()
        log.close()


def test_a_policy_setting_out_of_range_stops_the_worker_naming_it(project):
    result = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "worker", "--once"],
        env={**os.environ, **project.as_environment(), "AUTO_RETRAIN_MIN_INTERVAL_S": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AUTO_RETRAIN_MIN_INTERVAL_S=-1" in result.stderr + result.stdout


def test_alert_rules_use_metrics_the_service_exports(client):
    rules = yaml.safe_load((PROJECT_ROOT / "deploy/prometheus/alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {
        "HighErrorRate",
        "SlowPredictions",
        "InputDrift",
        "RetrainFailed",
        "NoModelLoaded",
    } <= set(alerts)
    client.post("/predict", data=b"not an image", content_type="image/png")
    exported = client.get("/metrics").get_data(as_text=True)
    for name, rule in alerts.items():
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]
        used = [word for word in _metric_names(rule["expr"])]
        assert used, name
        for metric in used:
            assert metric in exported, f"{name} uses {metric}, which /metrics does not export"


def _metric_names(expression: str) -> list[str]:
    import re

    return sorted(set(re.findall(r"\b(imgclf_[a-z_]+?)(?:_bucket|_count|_sum)?\b", expression)))


def test_alert_rules_pass_their_promtool_unit_tests():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("IMGCLF_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is not installed (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    folder = PROJECT_ROOT / "deploy" / "prometheus"
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run(
            [promtool, *command], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
