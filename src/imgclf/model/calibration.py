"""Calibrated probabilities: temperature scaling fitted on held-out images, and the expected
calibration error (ECE) with its reliability bins.

A network trained with cross-entropy is usually over-confident: of the answers it gives with
0.99, fewer than 99 % are right. Temperature scaling (Guo et al., 2017) divides the logits by
one number ``T`` chosen to minimise the negative log-likelihood of held-out images; the top
class never changes (accuracy is untouched), only how sure the model says it is. The model's
softmax output is enough: ``softmax(log p / T)`` equals ``softmax(logits / T)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import log_softmax

#: Reliability bins (equal width over the confidence of the top class).
BINS = 15
#: The temperature is searched in this range (log scale): beyond it the held-out images say
#: more about their own few errors than about the model.
TEMPERATURE_RANGE = (0.2, 10.0)
#: A fitted temperature is used only when it fits the held-out images better than T = 1 at
#: this level (likelihood-ratio test): see ``fit_temperature``.
SIGNIFICANCE = 0.05
#: Probabilities are clipped to this before their logarithm (float32 softmax can give 0).
FLOOR = 1e-12


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Logits up to a per-row constant (what temperature scaling needs), from probabilities."""
    return np.log(np.clip(np.asarray(probabilities, np.float64), FLOOR, 1.0))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities after dividing their logits by ``temperature`` (1: unchanged)."""
    if temperature == 1.0:
        return np.asarray(probabilities)
    scaled = np.exp(log_softmax(log_probabilities(probabilities) / temperature, axis=-1))
    return scaled.astype(np.float32)


def temperature_evidence(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(temperature, p)``: the temperature that minimises the negative log-likelihood of
    ``labels``, and the likelihood-ratio test's p-value against leaving the model as it is
    (T = 1; twice the log-likelihood gained, chi-squared with one degree of freedom). With
    every image answered right the temperature is 1 and p is 1: nothing says how sure it
    should be (the likelihood only grows as T shrinks to 0).

    Raises:
        ValueError: no images, or not one label per row of probabilities.
    """
    labels = np.asarray(labels)
    if len(labels) == 0 or len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels for {len(probabilities)} rows of probabilities")
    from scipy.optimize import minimize_scalar
    from scipy.stats import chi2

    logits = log_probabilities(probabilities)
    rows = np.arange(len(labels))
    if (logits.argmax(axis=1) == labels).all():
        return 1.0, 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=-1)[rows, labels].mean())

    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    gained = max(2 * len(labels) * (nll(0.0) - found.fun), 0.0)
    return round(float(np.exp(found.x)), 4), float(chi2.sf(gained, 1))


def fit_temperature(
    probabilities: np.ndarray, labels: np.ndarray, alpha: float = SIGNIFICANCE
) -> float:
    """The temperature to serve: the one that fits ``labels`` best (``temperature_evidence``)
    when it fits them significantly better than 1 (p at most ``alpha``), else 1. A few
    hundred held-out images pin a temperature loosely; changing a model that is already
    calibrated by a temperature the data cannot tell from 1 only adds noise to its ECE.

    Raises:
        ValueError: no images, or not one label per row of probabilities.
    """
    return _served(*temperature_evidence(probabilities, labels), alpha)


def _served(temperature: float, p: float, alpha: float = SIGNIFICANCE) -> float:
    return temperature if p <= alpha else 1.0


@dataclass(frozen=True)
class Reliability:
    """ECE and its bins: for each bin of top-class confidence, how many images, their mean
    confidence and how many of them were right."""

    ece: float
    edges: list[float]
    counts: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]

    def as_dict(self) -> dict:
        return asdict(self)


def bin_of(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The reliability bin (0 to ``bins - 1``, equal width, right edges closed) of each
    confidence."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    """Expected calibration error (the count-weighted mean gap between confidence and accuracy
    over ``bins`` equal-width bins of the top class's probability) and its bins."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = bin_of(confidence, bins)
    counts, mean_conf, mean_acc, gap = [], [], [], 0.0
    for index in range(bins):
        inside = which == index
        count = int(inside.sum())
        counts.append(count)
        if count == 0:
            mean_conf.append(None)
            mean_acc.append(None)
            continue
        conf, acc = float(confidence[inside].mean()), float(right[inside].mean())
        mean_conf.append(round(conf, 4))
        mean_acc.append(round(acc, 4))
        gap += count * abs(conf - acc)
    ece = gap / max(len(labels), 1)
    return Reliability(round(ece, 5), [round(e, 4) for e in edges], counts, mean_conf, mean_acc)


def calibrate(validation: tuple, test: tuple) -> dict:
    """Fit the temperature on ``validation`` (probabilities, labels) and measure ECE on
    ``test`` before and after: the model's ``calibration`` metadata."""
    fitted, p = temperature_evidence(*validation)
    temperature = _served(fitted, p)
    test_probabilities, test_labels = test
    before = reliability(test_probabilities, test_labels)
    after = reliability(scale(test_probabilities, temperature), test_labels)
    return {
        "temperature": temperature,
        "fitted_temperature": fitted,
        "p_value": round(p, 6),  # against T = 1: the fitted one is used when p <= 0.05
        "ece": after.ece,
        "ece_uncalibrated": before.ece,
        "bins": after.as_dict(),
        "bins_uncalibrated": before.as_dict(),
        "fitted_on": int(len(validation[1])),
        "measured_on": int(len(test_labels)),
    }
