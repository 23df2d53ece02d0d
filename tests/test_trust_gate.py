"""The gate's checks on calibration and the unknown answer (``imgclf.loop.trustcheck``): paired
tests that hold their false-rejection rate, and a candidate whose calibration or unknown answer
is clearly worse than the current model's is refused, naming the check."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from imgclf.loop import promotion, trustcheck
from imgclf.model import network, novelty, registry, training, trust
from imgclf.store import JobState


def _answers(rng, n: int, accuracy: float, sharpness: float) -> trustcheck.Answers:
    """A model right with chance ``accuracy`` whose stated confidence is ``accuracy`` moved
    towards 1 by ``sharpness`` (0: calibrated), with per-image noise."""
    right = rng.random(n) < accuracy
    confidence = np.clip(accuracy + sharpness * (1 - accuracy) + rng.normal(0, 0.05, n), 0.1, 1)
    return trustcheck.Answers(confidence, right, rng.random(n) < 0.05, rng.random(200) < 0.9)


def test_the_calibration_test_holds_alpha_on_equal_models_and_catches_an_overconfident_one():
    rng = np.random.default_rng(0)
    rejected, caught = 0, 0
    trials = 200
    for _ in range(trials):
        current = _answers(rng, 300, 0.9, 0.0)
        equal = _answers(rng, 300, 0.9, 0.0)
        [calibration, *_] = trustcheck.rows(equal, current, 0.05, resamples=400)
        assert calibration["check"] == trustcheck.CALIBRATION
        rejected += calibration["p_value"] <= 0.05
        sharp = _answers(rng, 300, 0.8, 0.95)  # says about 0.99 where it is right 80 %
        [calibration, *_] = trustcheck.rows(sharp, current, 0.05, resamples=400)
        caught += calibration["p_value"] <= 0.05 and calibration["harm"] > trustcheck.ECE_MARGIN
    # the randomisation test is exact: about 5 % of equal pairs reach p <= 0.05; 200 trials
    # put 0.09 over 2.5 standard deviations above it (a wrong, anti-conservative test, like the
    # bootstrap p-value that rejected 7.5 % on small sets, would pass it only by luck)
    assert rejected / trials <= 0.09, rejected
    # its ECE is about 0.16 higher; between equally calibrated models the difference on 300
    # images has a standard deviation near 0.02 (measured): found nearly always
    assert caught / trials >= 0.95, caught


def _candidate_trust(models_dir, version: str, temperature=None, threshold_times=1.0):
    """The current model's own temperature and detector, changed as asked."""
    metadata = registry.metadata(models_dir, version)
    calibration = dict(metadata["calibration"])
    if temperature is not None:
        calibration["temperature"] = temperature
    detector = novelty.Novelty.from_bytes(registry.attachment(models_dir, version, novelty.FILE))
    detector = replace(detector, threshold=detector.threshold * threshold_times)
    return trust.Trust(calibration, detector)


def test_the_gate_refuses_a_candidate_whose_calibration_or_unknown_answer_is_clearly_worse(
    project,
):
    models_dir = project.models_dir
    dataset = training.load_dataset(project.data_dir, 16, "grayscale")
    model = network.load_model(registry.model_path(models_dir, "v0001"))
    metrics, _ = training.evaluate(model, dataset.test)

    def decide(**changes):
        record = training.TrainingRecord(
            {}, {}, "grayscale", "v0001", trust=_candidate_trust(models_dir, "v0001", **changes)
        )
        return promotion.register_and_decide(models_dir, model, dataset, metrics, record)[0]

    same = decide()  # the same model and trust: no image differs, nothing to block
    assert same.promoted, same.decision.reason
    checks = {row["check"]: row for row in same.decision.trust}
    assert set(checks) == {trustcheck.CALIBRATION, trustcheck.FALSE_UNKNOWN, trustcheck.DETECTION}
    assert all(row["verdict"] == "not-worse" and row["difference"] == 0 for row in checks.values())
    assert checks[trustcheck.DETECTION]["n"] >= 500  # noise, shuffled tiles, photo crops
    kept = registry.metadata(models_dir, same.version)["gate_evidence"]["trust"]
    assert len(kept["candidate"]["confidence"]) == len(dataset.test)
    current = same.version

    # temperature 10 on a model right on nine in ten digits: probabilities near uniform, an
    # ECE above 0.5 against the fitted one's few hundredths: far beyond margin and noise on
    # 360 test images, on any CPU's session model
    flat = decide(temperature=10.0)
    assert flat.state is JobState.REJECTED, flat.decision.reason
    assert "calibration: ECE" in flat.decision.reason
    assert registry.current_version(models_dir) == current

    # a threshold a million times higher: no photo or noise image is unknown any more (the
    # current model calls most of 520 unknown)
    blind = decide(threshold_times=1e6)
    assert blind.state is JobState.REJECTED
    assert "unknown: unlike images" in blind.decision.reason, blind.decision.reason
    # and a million times lower: every digit is unknown (the current model: a few per cent)
    jumpy = decide(threshold_times=1e-6)
    assert jumpy.state is JobState.REJECTED
    assert "unknown: test images" in jumpy.decision.reason, jumpy.decision.reason
