"""Inference runtimes: OpenVINO answers as JAX does, is chosen by INFERENCE_RUNTIME, names the
layer it cannot run and leaves the serving to JAX then (logged), and serves under gunicorn."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import wait_for

from imgclf import config
from imgclf.model import network, registry, runtime
from imgclf.model.batches import as_inputs
from imgclf.model.prediction import Predictor

OPENVINO = pytest.mark.skipif(
    runtime.openvino_missing() is not None,
    reason=f"OpenVINO is not installed: {runtime.openvino_missing()}",
)


@keras.saving.register_keras_serializable(package="imgclf_tests")
class PseudoInverseMix(keras.layers.Layer):
    """Adds nothing (times 0) but needs a pseudo-inverse, which Keras' OpenVINO backend lacks:
    a real layer OpenVINO cannot run (and JAX can)."""

    def call(self, inputs):
        square = keras.ops.eye(2) + keras.ops.mean(inputs) * 0.0
        return inputs + 0.0 * keras.ops.sum(keras.ops.linalg.pinv(square))


def test_settings_validate_the_runtime_and_batching(monkeypatch):
    monkeypatch.setenv("INFERENCE_RUNTIME", "OpenVINO")
    monkeypatch.setenv("BATCH_MAX_SIZE", "1")
    settings = config.get_runtime_settings()
    assert settings.runtime == "openvino" and not settings.batching
    monkeypatch.setenv("BATCH_MAX_SIZE", "auto")
    assert config.get_runtime_settings().batch_max_size is None  # chosen per runtime
    assert runtime.batch_limit(None, "openvino", 2) == runtime.AUTO_BATCH_MAX_SIZE
    assert runtime.batch_limit(None, "openvino", 1) == 1  # one thread: a batch costs as much
    assert runtime.batch_limit(None, "jax", 4) == 1  # JAX on a CPU (the suite's): off
    assert runtime.batch_limit(4, "jax") == 4
    for name, value, said in (
        ("INFERENCE_RUNTIME", "tpu", "INFERENCE_RUNTIME='tpu': expected one of jax"),
        ("BATCH_MAX_SIZE", "0", "BATCH_MAX_SIZE=0"),
        ("BATCH_MAX_WAIT_MS", "soon", "BATCH_MAX_WAIT_MS='soon' is not a number"),
        ("INFERENCE_THREADS", "0", "INFERENCE_THREADS=0"),
    ):
        with monkeypatch.context() as local:
            local.setenv(name, value)
            with pytest.raises(config.ConfigError, match=said):
                config.get_runtime_settings()


def test_the_conversion_child_gets_no_secret(monkeypatch):
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN", "hush")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:hush@db/x")
    environment = config.openvino_export_environment(sys.path)
    assert "hush" not in json.dumps(environment)
    assert environment["KERAS_BACKEND"] == "openvino"


def test_without_openvino_every_request_is_served_by_jax(trained_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    assert runtime.choose("auto")[0] == "jax"
    predictor = Predictor.load(trained_root / "models", runtime="openvino")
    assert predictor.runtime == "jax" and "OpenVINO is not installed" in predictor.runtime_note


@OPENVINO
def test_auto_chooses_openvino_on_a_cpu():
    assert runtime.choose("auto") == ("openvino", None)
    assert runtime.choose("jax") == ("jax", None)


@OPENVINO
def test_openvino_answers_as_jax_does_on_real_and_unlike_images(trained_root, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_root / "models", models)
    jax_predictor = Predictor.load(models, runtime="jax")
    served = Predictor.load(models, runtime="openvino")
    assert served.runtime == "openvino" and served.runtime_note is None
    assert max(served.runtime_differences.values()) <= runtime.TOLERANCE
    from imgclf.model import training

    test = training.load_dataset(trained_root / "data", 16, "grayscale").test
    noise = np.random.default_rng(0).uniform(0, 1, (40, 16, 16, 1)).astype(np.float32)
    for images in (as_inputs(np.asarray(test.images)), noise, as_inputs(test.images[:1])):
        expected, unknown, scores = jax_predictor.answers(images)
        found, found_unknown, found_scores = served.answers(images)
        assert np.abs(found - expected).max() <= 1e-4  # the bar
        near = np.abs(scores - 1.0) < 1e-3  # at the threshold a 1e-6 difference may flip it
        assert (found_unknown == unknown)[~near].all()
        assert np.abs(found_scores - scores).max() <= 1e-4 * max(1.0, np.abs(scores).max())
    # converted once: a second load finds the IR by the model file's digest
    (converted,) = [p for p in (models / runtime.CACHE_FOLDER).iterdir() if p.is_dir()]
    stamp = (converted / "model.xml").stat().st_mtime_ns
    assert Predictor.load(models, runtime="auto").runtime == "openvino"
    assert (converted / "model.xml").stat().st_mtime_ns == stamp
    assert converted.name.startswith(f"{served.version}-")


def _register_unconvertible(models: Path, tmp_path: Path) -> str:
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = PseudoInverseMix(name="odd_one")(x)
    x = keras.layers.Dropout(0.0, name=network.FEATURES_NAME)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    path = network.save_model(keras.Model(inputs, outputs), tmp_path / "odd.keras")
    info = {"class_names": ["a", "b", "c"], "image_size": [16, 16], "color_mode": "grayscale"}
    return registry.register(models, path, info)


@OPENVINO
def test_a_layer_openvino_cannot_run_is_named_and_jax_serves(tmp_path, caplog):
    models = tmp_path / "models"
    version = _register_unconvertible(models, tmp_path)
    with pytest.raises(runtime.RuntimeUnavailable) as raised:
        runtime.export(models, version)
    said = str(raised.value)
    assert "'odd_one' (PseudoInverseMix)" in said and "pinv" in said, said
    assert not [p for p in (models / runtime.CACHE_FOLDER).iterdir() if p.is_dir()]  # no half
    with caplog.at_level(logging.WARNING, logger="imgclf.model.prediction"):
        predictor = Predictor.load(models, version, runtime="openvino")
    assert predictor.runtime == "jax" and "'odd_one' (PseudoInverseMix)" in predictor.runtime_note
    assert any("serves with JAX" in r.getMessage() and "odd_one" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    probabilities = predictor.predict_images(np.zeros((2, 16, 16, 1), np.float32))
    assert probabilities.shape == (2, 3)


@OPENVINO
def test_openvino_serves_from_many_threads(trained_root, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_root / "models", models)
    served = Predictor.load(models, runtime="openvino")
    images = np.random.default_rng(1).uniform(0, 1, (24, 16, 16, 1)).astype(np.float32)
    expected = served.predict_images(images)
    with ThreadPoolExecutor(max_workers=6) as pool:
        found = list(pool.map(lambda i: served.predict_images(images[i : i + 1]), range(24)))
    assert np.abs(np.concatenate(found) - expected).max() <= 1e-5


@OPENVINO
@pytest.mark.slow
def test_gunicorn_serves_with_openvino_and_batches(openvino_served, trained_root):
    """Two gunicorn workers on OpenVINO with micro-batching: /health and /metrics say so, 48
    concurrent requests with bad images among them are all answered as JAX answers them."""
    import requests

    url = openvino_served
    served: dict[int, dict] = {}  # each worker loads (and converts or waits) on its own

    def both_workers_serve():
        health = requests.get(f"{url}/health", timeout=10).json()
        if health["status"] == "ok":
            served[health["worker_pid"]] = health
        return len(served) == 2

    wait_for(both_workers_serve, 120, "both workers serving")
    for health in served.values():
        assert (health["runtime"], health["runtime_requested"]) == ("openvino", "openvino")
        assert health["batching"] == {"setting": "auto", "max_size": 8, "max_wait_ms": 2.0}
        assert health["runtime_note"] is None
    paths = sorted((trained_root / "data" / "test").glob("*/*.png"))[:40]
    bodies = [p.read_bytes() for p in paths] + [b"not an image"] * 8

    def post(body):
        response = requests.post(
            f"{url}/predict", data=body, headers={"Content-Type": "image/png"}, timeout=30
        )
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(post, bodies))
    assert [code for code, _ in answers] == [200] * 40 + [422] * 8
    reference = Predictor.load(trained_root / "models", runtime="jax")
    expected = reference.classify([p.read_bytes() for p in paths])
    for (_, body), wanted in zip(answers, expected, strict=False):
        assert body["label"] == wanted.prediction.label
        assert abs(body["confidence"] - wanted.prediction.confidence) <= 1e-4
    scraped = requests.get(f"{url}/metrics", timeout=10).text
    assert 'imgclf_inference_runtime{requested="openvino",runtime="openvino"' in scraped
    calls = sum(
        float(line.split()[-1]) for line in scraped.splitlines()
        if line.startswith("imgclf_batch_images_count")
    )  # fmt: skip
    assert 1 <= calls <= 40  # every good request went through the batcher, none twice


@pytest.fixture
def openvino_served(monkeypatch, project, worker, tmp_path, request):
    monkeypatch.setenv("INFERENCE_RUNTIME", "openvino")
    monkeypatch.delenv("BATCH_MAX_SIZE", raising=False)  # auto: 8 for OpenVINO ...
    monkeypatch.setenv("INFERENCE_THREADS", "2")  # ... with two threads a worker
    url, _ = request.getfixturevalue("server")
    return url
