"""The gate's checks on calibration and the unknown answer (``imgclf.loop.trustcheck``): paired
tests that hold their false-rejection rate, and a candidate whose calibration or unknown answer
is clearly worse than the current model's is refused, naming the check."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from imgclf.loop import gate, promotion, trustcheck
from imgclf.model import network, novelty, posthoc, registry, training
from imgclf.store import JobState


def _calibrated(rng, n: int, low: float, high: float) -> trustcheck.Answers:
    """A perfectly calibrated model: confidence drawn in [low, high], right with exactly that
    chance."""
    confidence = rng.uniform(low, high, n)
    right = rng.random(n) < confidence
    return trustcheck.Answers(confidence, right, None, None)


def test_the_calibration_check_holds_its_level_whatever_the_sharpness_and_catches_overconfidence():
    rng = np.random.default_rng(0)
    trials, blocked, significant, caught = 150, 0, 0, 0
    for trial in range(trials):
        # equally (perfectly) calibrated, equally accurate: one model always 0.7 sure (one
        # bin), the other anywhere from 0.4 to 1.0 (many thinly filled bins: a raw binned ECE
        # calls it worse); each takes the candidate's seat in turn
        steady, spread = _calibrated(rng, 360, 0.7, 0.7), _calibrated(rng, 360, 0.4, 1.0)
        pair = (spread, steady) if trial % 2 else (steady, spread)
        [row] = trustcheck.rows(*pair, 0.05, resamples=400)
        significant += row["p_value"] <= 0.05
        blocked += row["p_value"] <= 0.05 and row["harm"] > trustcheck.ECE_MARGIN
        # the same answers stated 0.15 more sure than they are right: ECE about 0.15 higher
        louder = trustcheck.Answers(np.minimum(spread.confidence + 0.15, 1.0), spread.right,
                                    None, None)  # fmt: skip
        [row] = trustcheck.rows(louder, steady, 0.05, resamples=400)
        caught += row["p_value"] <= 0.05 and row["harm"] > trustcheck.ECE_MARGIN
    # measured: 1 of 150 significant, 1 blocked, 146 of 150 overconfident ones caught (pure
    # NumPy and seeded: the same on any CPU). A bootstrap p-value is approximate, so its bound
    # is looser than the 5 % level; the raw binned ECE tested by swapping the answers (this
    # check's first version) blocked equally calibrated models of different sharpness far
    # more often
    assert blocked / trials <= 0.05, blocked
    assert significant / trials <= 0.10, significant
    assert caught / trials >= 0.95, caught


def _candidate_trust(models_dir, version: str, temperature=None, threshold_times=1.0):
    """The current model's own temperature and detector, changed as asked."""
    metadata = registry.metadata(models_dir, version)
    calibration = dict(metadata["calibration"])
    if temperature is not None:
        calibration["temperature"] = temperature
    detector = novelty.Novelty.from_bytes(registry.attachment(models_dir, version, novelty.FILE))
    detector = replace(detector, threshold=detector.threshold * threshold_times)
    return posthoc.Trust(calibration, detector)


@pytest.mark.slow  # trains models: about 15 s, kept out of make test-fast
def test_the_gate_refuses_a_candidate_whose_calibration_or_unknown_answer_is_clearly_worse(
    project,
):
    models_dir = project.models_dir
    dataset = training.load_dataset(project.data_dir, 16, "grayscale")
    model = network.load_model(registry.model_path(models_dir, "v0001"))
    scored = promotion.score(model, dataset.test)

    def decide(**changes):
        record = training.TrainingRecord(
            {}, {}, "grayscale", "v0001", trust=_candidate_trust(models_dir, "v0001", **changes)
        )
        thresholds = gate.GateThresholds()
        return promotion.register_and_decide(
            models_dir, model, dataset, scored, record, thresholds
        )[0]

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
