"""The gate's checks on what a candidate knows about its own answers: is its calibration, or its
"unknown" answer, clearly worse than the current model's?

Both models answer the same images, so each check is paired, like the rest of the gate
(``imgclf.loop.comparison``), and joins the same family of comparisons (one Holm step-down at
level ``alpha``); a check blocks only when the candidate is worse *with confidence* and by more
than its margin:

- ``calibration``: the expected calibration error (ECE) of the calibrated probabilities on the
  test images, debiased for bin noise (``_ece``). A paired bootstrap (the same resampled
  images for both) gives the 95 % interval of the difference and the one-sided p-value (the
  share of resamples in which the candidate is not worse). Margin ``ECE_MARGIN``.
- ``unknown: test images``: the share of test images answered "unknown" (false unknowns). An
  exact one-sided McNemar test on the images where the two models disagree. Margin: the gate's
  ``max_recall_drop``.
- ``unknown: unlike images``: the share of images unlike every class (``imgclf.model.ood``:
  noise, shuffled tiles of the test images, crops of real photos) answered "unknown". The same
  test and margin.

Only the test images of classes the current model knows take part: on a class new to it the
current model cannot be right, and calling those images unknown would be correct of it.
A check is left out when either model lacks what it needs (a model trained before calibration
and the unknown answer existed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgclf.loop import evidence
from imgclf.model import calibration

#: How much higher the candidate's ECE may be before it counts: a difference a user reading the
#: probabilities would notice (a 0.9 that is right 87 % of the time). Sampling noise is the
#: test's business: between equally calibrated models the ECE difference has a standard
#: deviation near 0.02 on 300 test images and 0.01 on 1,000 (simulated, 15 bins).
ECE_MARGIN = 0.03
CALIBRATION = "calibration"
FALSE_UNKNOWN = "unknown: test images"
DETECTION = "unknown: unlike images"


@dataclass(frozen=True)
class Answers:
    """One model's answers for the checks: on the test images its calibrated confidence,
    whether it was right and whether it said unknown; on the unlike images whether it said
    unknown (the unknown arrays are None without a detector)."""

    confidence: np.ndarray
    right: np.ndarray
    unknown: np.ndarray | None
    unlike_unknown: np.ndarray | None

    def as_dict(self) -> dict:
        flags = lambda a: None if a is None else np.asarray(a, int).tolist()  # noqa: E731
        return {
            "confidence": np.round(np.asarray(self.confidence, float), 5).tolist(),
            "right": flags(self.right),
            "unknown": flags(self.unknown),
            "unlike_unknown": flags(self.unlike_unknown),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Answers:
        flags = lambda a: None if a is None else np.asarray(a, bool)  # noqa: E731
        return cls(
            np.asarray(values["confidence"], float),
            np.asarray(values["right"], bool),
            flags(values.get("unknown")),
            flags(values.get("unlike_unknown")),
        )


def answers(predictor, images: np.ndarray, labels: np.ndarray, unlike: np.ndarray) -> Answers:
    """``predictor``'s answers (``Predictor.answers``: calibrated, with its detector) on the
    test images of the compared classes and on the unlike images."""
    probabilities, unknown = _answer(predictor, images)
    _, unlike_unknown = _answer(predictor, unlike)
    return answers_from(probabilities, unknown, labels, unlike_unknown)


def answers_from(probabilities, unknown, labels, unlike_unknown) -> Answers:
    """``Answers`` from a model's calibrated ``probabilities`` and ``unknown`` flags on the test
    images (computed once for the metrics too: ``loop.promotion``) and on the unlike ones."""
    return Answers(
        probabilities.max(axis=1),
        probabilities.argmax(axis=1) == np.asarray(labels),
        unknown,
        unlike_unknown,
    )


def _answer(predictor, images: np.ndarray, batch: int = 256):
    """``(probabilities, unknown)`` of ``images``, batch by batch (unknown None without a
    detector)."""
    parts = [
        predictor.answers(np.asarray(images[i : i + batch], np.float32))
        for i in range(0, len(images), batch)
    ]
    probabilities = np.concatenate([p[0] for p in parts])
    if parts[0][1] is None:
        return probabilities, None
    return probabilities, np.concatenate([p[1] for p in parts])


def _ece(confidence: np.ndarray, right: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Debiased ECE (``calibration.reliability``'s bins) under each row of image ``weights``
    (R, n): each bin's ``|sum of (confidence - right)|`` less what bin noise alone gives a
    perfectly calibrated model (``sqrt(2/pi)`` standard deviations of that sum, the sum of
    ``c (1 - c)``), over the images. Binned ECE grows with the number of thinly filled bins;
    without the correction a calibrated model whose confidences spread over many bins looks
    worse than one whose confidences sit in a few."""
    table = np.eye(calibration.BINS)[calibration.bin_of(confidence)]  # (n, bins)
    gaps = (confidence - right.astype(float))[:, None] * table
    noise = (confidence * (1 - confidence))[:, None] * table
    found = []
    for start in range(0, len(weights), 200):  # (200, n) at a time: bounded memory
        chunk = weights[start : start + 200]
        summed, variance = chunk @ gaps, chunk @ noise  # (rows, bins)
        total = np.abs(summed).sum(axis=1) - np.sqrt(2 / np.pi) * np.sqrt(variance).sum(axis=1)
        found.append(total / chunk.sum(axis=1))
    return np.concatenate(found)


def _calibration_row(candidate: Answers, current: Answers, resamples: int, seed: int) -> dict:
    """Debiased ECE of both (the same images), the difference's paired-bootstrap interval, and
    the share of resamples in which the candidate is not worse as the one-sided p-value (a
    randomisation test would assume the two models' answers exchangeable, which two equally
    calibrated models of different sharpness are not)."""
    n = len(candidate.confidence)
    rng = np.random.default_rng(seed)
    ones = np.ones((1, n))
    observed_cand = float(_ece(candidate.confidence, candidate.right, ones)[0])
    observed_cur = float(_ece(current.confidence, current.right, ones)[0])
    difference = observed_cand - observed_cur
    counts = rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)
    booted = _ece(candidate.confidence, candidate.right, counts) - _ece(
        current.confidence, current.right, counts
    )
    low, high = np.percentile(booted, [2.5, 97.5])
    return {
        "check": CALIBRATION,
        "what": "ECE (debiased)",
        "n": n,
        "candidate": observed_cand,
        "current": observed_cur,
        "difference": difference,
        "harm": difference,
        "margin": ECE_MARGIN,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float((1 + np.sum(booted <= 0.0)) / (resamples + 1)),
        "p_min": 1 / (resamples + 1),
    }


def _flag_row(check: str, what: str, candidate_ok, current_ok, higher_is_worse: bool, margin):
    """A McNemar row on per-image flags: ``*_ok`` is True where that model did the right thing
    (did not call a test image unknown; did call an unlike image unknown)."""
    n = len(candidate_ok)
    b, w, p = evidence.mcnemar_worse(candidate_ok, current_ok)
    low, high = evidence.paired_interval(w, b, n)
    rate = lambda ok: float(np.mean(~ok if higher_is_worse else ok))  # noqa: E731
    difference = rate(candidate_ok) - rate(current_ok)
    if higher_is_worse:  # the interval of the rate, not of the share done right
        low, high = -high, -low
    return {
        "check": check,
        "what": what,
        "n": n,
        "candidate": rate(candidate_ok),
        "current": rate(current_ok),
        "difference": difference,
        "harm": difference if higher_is_worse else -difference,
        "margin": margin,
        "ci_low": low,
        "ci_high": high,
        "only_current_right": b,
        "only_candidate_right": w,
        "p_value": p,
        "p_min": evidence.smallest_p(b + w),
    }


def rows(
    candidate: Answers,
    current: Answers,
    max_recall_drop: float,
    resamples: int = evidence.RESAMPLES,
    seed: int = 0,
) -> list[dict]:
    """The checks both models can be compared on (see the module), each a row with both
    figures, the difference and its interval, the p-value and its margin (``harm`` > margin
    is worse)."""
    found = []
    if len(candidate.confidence):
        found.append(_calibration_row(candidate, current, resamples, seed))
    if candidate.unknown is not None and current.unknown is not None and len(candidate.unknown):
        found.append(
            _flag_row(
                FALSE_UNKNOWN,
                "share answered unknown",
                ~candidate.unknown,
                ~current.unknown,
                True,
                max_recall_drop,
            )
        )
    if candidate.unlike_unknown is not None and current.unlike_unknown is not None:
        found.append(
            _flag_row(
                DETECTION,
                "share answered unknown",
                candidate.unlike_unknown,
                current.unlike_unknown,
                False,
                max_recall_drop,
            )
        )
    return found
