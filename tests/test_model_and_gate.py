from dataclasses import replace

import numpy as np
import pytest

from imgclf.loop import gate
from imgclf.model import evaluation, network, training
from imgclf.model.prediction import Predictor


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    model = network.compile_model(network.build_model(3, (16, 16, 1)))
    images = np.random.default_rng(0).random((5, 16, 16, 1), dtype=np.float32)
    path = network.save_model(model, tmp_path / "m.keras")
    loaded = network.load_model(path)
    np.testing.assert_allclose(
        network.predict_proba(loaded, images), network.predict_proba(model, images), atol=1e-6
    )


def test_widen_head_keeps_old_class_outputs_and_adds_new_ones():
    model = network.build_model(2, (16, 16, 1))
    images = np.random.default_rng(1).random((4, 16, 16, 1), dtype=np.float32)
    before = network.predict_proba(model, images)
    widened = network.widen_head(model, ["a", "b"], ["a", "b", "c"])
    after = network.predict_proba(widened, images)
    assert after.shape == (4, 3)
    # logits of the old classes are unchanged, so their ratio is too
    np.testing.assert_allclose(after[:, 0] / after[:, 1], before[:, 0] / before[:, 1], rtol=1e-4)
    with pytest.raises(ValueError, match="drops"):
        network.widen_head(model, ["a", "b"], ["a"])


def test_build_model_rejects_single_class_and_unknown_backbone():
    with pytest.raises(ValueError, match="at least two"):
        network.build_model(1, (16, 16, 1))
    with pytest.raises(ValueError, match="backbone"):
        network.build_model(3, (32, 32, 1), backbone="vgg99")


def test_cnn_width_doubles_block_by_block_and_its_default_is_the_model_trained_so_far():
    """``cnn_width`` (notebook 02's parameter) sets the CNN's three blocks; its default builds
    the same CNN as ``build_model`` always has, so existing models and their retrains keep it."""
    assert network.cnn_filters(network.TrainParams().cnn_width) == (16, 32, 64)
    wide = network.build_model(3, (16, 16, 1), filters=network.cnn_filters(32))
    widths = [wide.get_layer(f"block{i}_conv2").filters for i in (1, 2, 3)]
    assert widths == [32, 64, 128]
    assert wide.count_params() > 3 * network.build_model(3, (16, 16, 1)).count_params()
    for bad in (0, 3, 512):
        with pytest.raises(ValueError, match="cnn_width"):
            network.cnn_filters(bad)


def test_gate_thresholds_reject_an_unknown_metric_and_a_negative_tolerance():
    with pytest.raises(ValueError, match="metric"):
        gate.GateThresholds(metric="auc")
    with pytest.raises(ValueError, match="tolerance"):
        gate.GateThresholds(tolerance=-1)


def test_gate_thresholds_come_from_the_settings_unless_given(monkeypatch):
    from imgclf import config

    for name in ("GATE_MIN_TEST_IMAGES", "GATE_MAX_RECALL_DROP", "GATE_MIN_NEW_CLASS_RECALL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GATE_ALPHA", raising=False)
    # one set of defaults: the settings'
    assert gate.GateThresholds() == gate.GateThresholds.from_settings(config.get_loop_settings())
    monkeypatch.setenv("GATE_MIN_TEST_IMAGES", "9")
    loop = config.get_loop_settings()
    assert gate.GateThresholds.from_settings(loop).min_test_images == 9
    given = gate.GateThresholds.from_settings(loop, min_test_images=2, alpha=None)
    assert given.min_test_images == 2 and given.alpha == loop.alpha
    with pytest.raises(ValueError, match="not a gate threshold: epochs"):
        gate.GateThresholds.from_settings(loop, epochs=3)


def test_metrics_match_hand_counts():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    metrics = evaluation.classification_metrics(labels, probabilities, ["a", "b"])
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion_matrix"] == [[1, 1], [0, 2]]
    assert metrics["per_class"]["a"]["recall"] == 0.5


@pytest.mark.slow  # trains models: about 15 s, kept out of make test-fast
def test_training_is_reproducible_and_registered_model_serves(digits_dir, tmp_path):
    params = network.TrainParams(epochs=2, patience=2)
    results = []
    for _ in range(2):
        network.set_seed(3)
        dataset = training.load_dataset(digits_dir, 16, "grayscale")
        model = network.compile_model(network.build_model(10, dataset.input_shape))
        training.fit(model, dataset, params, [], seed=3, verbose=0)
        metrics, _ = training.evaluate(model, dataset.test)
        results.append(metrics)
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert results[0]["loss"] == results[1]["loss"]
    record = training.TrainingRecord({}, {}, "grayscale")
    version = training.register(tmp_path, model, dataset, results[1], record)
    predictor = Predictor.load(tmp_path, version)
    image = (digits_dir / "test" / "3").glob("*.png").__next__().read_bytes()
    [result] = predictor.classify([image])
    prediction = result.prediction
    assert prediction.label in dataset.class_names
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-4


def test_register_and_decide_gates_registers_and_promotes(project):
    from imgclf.loop import promotion
    from imgclf.model import registry
    from imgclf.store import JobState

    models_dir = project.models_dir
    dataset = training.load_dataset(project.data_dir, 16, "grayscale")
    model = network.load_model(registry.model_path(models_dir, "v0001"))
    scored = promotion.score(model, dataset.test)  # the candidate's one pass
    metrics, probabilities = scored.metrics, scored.probabilities
    assert metrics == training.evaluate(model, dataset.test)[0], "the same figures as Keras'"
    assert scored.features.shape[0] == len(dataset.test)
    record = training.TrainingRecord({}, {}, "grayscale", parent_version="v0001")

    thresholds = gate.GateThresholds()
    same, current_metrics = promotion.register_and_decide(
        models_dir, model, dataset, scored, record, thresholds
    )
    assert same.promoted and same.state is JobState.PROMOTED
    assert same.decision.verdict == "not-worse" and "no class shown worse" in same.decision.reason
    assert current_metrics["f1_macro"] == metrics["f1_macro"]
    assert registry.current_version(models_dir) == same.version == "v0002"
    kept = registry.metadata(models_dir, "v0002")["gate_evidence"]
    assert kept["current_version"] == "v0001" and len(kept["labels"]) == len(dataset.test)
    assert kept["fingerprint"] == training.test_fingerprint(dataset)

    # a candidate that calls every '3' a '5' (the answers are the evidence, not the figures)
    answers = probabilities.argmax(axis=1)
    answers[dataset.test.labels == 3] = 5
    worse = evaluation.classification_metrics(
        dataset.test.labels, np.eye(10)[answers], dataset.class_names
    )
    confused = replace(scored, metrics=worse, probabilities=np.eye(10)[answers])
    rejected, _ = promotion.register_and_decide(
        models_dir, model, dataset, confused, record, thresholds
    )
    assert rejected.state is JobState.REJECTED and registry.current_version(models_dir) == "v0002"
    assert list(rejected.decision.blocked) == ["3"] and "'3': recall" in rejected.decision.reason
    assert registry.metadata(models_dir, rejected.version)["gate"]["promote"] is False

    forced, _ = promotion.register_and_decide(
        models_dir, model, dataset, confused, record, thresholds, policy="always"
    )
    assert forced.promoted and "promote='always'" in forced.decision.reason
    assert promotion.Outcome.from_dict(forced.as_dict()) == forced
    with pytest.raises(ValueError, match="promote="):
        promotion.register_and_decide(
            models_dir, model, dataset, scored, record, thresholds, policy="maybe"
        )
    with pytest.raises(ValueError, match="outcome"):
        promotion.Outcome.from_dict({"version": "v1"})


def test_a_registered_model_keeps_its_test_answers_and_the_next_gate_reads_them(project):
    """Each model is scored once on a test set: the gate reads the current model's answers
    kept at its registration instead of running it, and decides exactly as it did running
    it; on another test set it runs it again."""
    from imgclf.loop import answers, promotion
    from imgclf.model import novelty, posthoc, registry

    models_dir = project.models_dir
    dataset = training.load_dataset(project.data_dir, 16, "grayscale")
    model = network.load_model(registry.model_path(models_dir, "v0001"))
    trust = posthoc.Trust(
        registry.metadata(models_dir, "v0001")["calibration"],
        novelty.Novelty.from_bytes(registry.attachment(models_dir, "v0001", novelty.FILE)),
    )
    record = training.TrainingRecord({}, {}, "grayscale", parent_version="v0001", trust=trust)
    thresholds = gate.GateThresholds()
    known = registry.metadata(models_dir, "v0001")  # v0002 is the same model: the same facts
    assert answers.read(models_dir, "v0001", dataset, known) is None  # registered without them

    ran = promotion.decide(
        models_dir, model, dataset, promotion.score(model, dataset.test), record, thresholds
    )
    assert ran.trust is not None and ran.kept is not None and ran.kept.complete
    assert registry.current_version(models_dir) == "v0001"

    promotion.register_and_decide(
        models_dir, model, dataset, promotion.score(model, dataset.test), record, thresholds
    )
    assert registry.current_version(models_dir) == "v0002"
    kept = answers.read(models_dir, "v0002", dataset, known)
    assert kept is not None and len(kept.outputs) == len(dataset.test.labels)
    current, scored, predictor = promotion.score_current(models_dir, dataset)
    assert current == "v0002" and predictor is None and scored.kept is not None  # not run

    read = promotion.decide(
        models_dir, model, dataset, promotion.score(model, dataset.test), record, thresholds
    )
    assert read.current_metrics == ran.current_metrics
    assert read.decision.as_dict() == ran.decision.as_dict()
    for mine, theirs in zip(read.trust, ran.trust, strict=True):
        assert np.allclose(mine.confidence, theirs.confidence, atol=1e-6)
        assert (mine.unknown == theirs.unknown).all()
        assert (mine.unlike_unknown == theirs.unlike_unknown).all()

    other = answers.Answers(
        "another test set",
        kept.outputs,
        kept.probabilities,
        kept.unknown,
        kept.unlike_unknown,
        kept.unlike_digest,
    )
    kept_file = models_dir / "v0002" / answers.FILE
    kept_file.chmod(0o644)  # the registry makes it read-only
    kept_file.write_bytes(other.to_bytes())
    assert answers.read(models_dir, "v0002", dataset, known) is None
    assert promotion.score_current(models_dir, dataset)[2] is not None  # run again
    made_elsewhere = replace(other, fingerprint=kept.fingerprint, unlike_digest="other code")
    kept_file.write_bytes(made_elsewhere.to_bytes())
    assert answers.read(models_dir, "v0002", dataset, known) is None  # other unlike images
    kept_file.write_bytes(b"not an npz")
    assert answers.read(models_dir, "v0002", dataset, known) is None
