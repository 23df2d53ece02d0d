"""An "unknown" answer: how far an image's features lie from every class the model was trained
on, and the distance beyond which the model says it does not know.

The score is the Mahalanobis distance (Lee et al., 2018) of the pooled features (the input of
the classifier's head) to the nearest class mean, under one covariance shared by the classes
(Ledoit-Wolf shrinkage: a few hundred images estimate a 64- to 1,792-dimensional covariance).
A photo sent to the digits model gets a digit's softmax all the same, often a confident one,
but its features are far from every digit's.

The threshold is chosen on held-out in-distribution images (the validation split, never
trained on) for a target false-unknown rate (``UNKNOWN_FALSE_RATE``, 5 %): the smallest order
statistic whose one-sided 95 % Clopper-Pearson upper bound on the share of in-distribution
images above it is within the target, so that a small validation split errs towards answering,
not towards "unknown".
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

#: The registry file (in the version's folder) that holds a detector.
FILE = "novelty.npz"
#: The default share of in-distribution images the threshold may call unknown.
FALSE_UNKNOWN_RATE = 0.05
#: Confidence of the bound on that share.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Novelty:
    """Class means, the shared precision matrix and the threshold on the squared distance."""

    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features)
    threshold: float
    target: float
    held_out: int
    #: features laid out as this many regions' rows (the ``grid`` tap), averaged first
    regions: int = 1

    def __post_init__(self) -> None:
        # precision = L L^T: the distance is a Euclidean one after one (d x d) product, so a
        # request costs n*d*d + n*k*d, not n*k*d*d (served on every prediction)
        whiten = np.linalg.cholesky(self.precision)
        object.__setattr__(self, "_whiten", whiten)
        object.__setattr__(self, "_centres", self.means @ whiten)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance of each row to the nearest class mean."""
        moved = reduce(features, self.regions) @ self._whiten  # (n, d)
        distances = ((moved[:, None, :] - self._centres[None, :, :]) ** 2).sum(axis=-1)
        return distances.min(axis=1)

    def unknown(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(unknown, score)`` per row: a score over the threshold is unknown. The score is
        the distance over the threshold (1.0 at the threshold), comparable across models."""
        scores = self.scores(features) / self.threshold
        return scores > 1.0, scores

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            means=self.means,
            precision=self.precision,
            figures=np.array([self.threshold, self.target, self.held_out, self.regions]),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> Novelty:
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            threshold, target, held_out, *more = arrays["figures"].tolist()
            regions = int(more[0]) if more else 1  # a detector saved before regions
            return cls(
                arrays["means"], arrays["precision"], threshold, target, int(held_out), regions
            )

    def summary(self) -> dict:
        """What the model's metadata records (the arrays stay in ``FILE``)."""
        return {
            "method": "mahalanobis",
            "file": FILE,
            "threshold": round(self.threshold, 4),
            "false_unknown_target": self.target,
            "held_out_images": self.held_out,
            "false_unknown_bound": false_unknown_bound(self.held_out, self.target),
            "features": int(self.means.shape[1]),
            "regions": self.regions,
        }


def reduce(features: np.ndarray, regions: int) -> np.ndarray:
    """``features`` as float64, each row's ``regions`` equal parts averaged: a grid model's
    9 x 512 features become 512, as many as its ``mid`` sibling's (a precision matrix on 4,608
    would take 170 MB a version, and on a few hundred images say little more)."""
    features = np.asarray(features, np.float64)
    if regions <= 1:
        return features
    return features.reshape(len(features), regions, -1).mean(axis=1)


def false_unknown_bound(held_out: int, target: float) -> float:
    """The share of images like the training ones answered unknown that the threshold is known
    (with ``CONFIDENCE``) not to exceed: ``target`` where the held-out images suffice, else what
    the largest of them guarantees (18 images: 0.153; ``target`` 0.01 needs about 300)."""
    from scipy.stats import beta

    if held_out <= 0:
        return 1.0
    return round(max(target, float(beta.ppf(CONFIDENCE, 1, held_out))), 4)


def conservative_threshold(scores: np.ndarray, target: float) -> float:
    """The smallest of ``scores`` such that, with ``CONFIDENCE``, at most ``target`` of
    in-distribution images lie above it (the largest score when none qualifies)."""
    from scipy.stats import beta

    ordered = np.sort(np.asarray(scores, np.float64))
    n = len(ordered)
    for above in range(n - 1, -1, -1):  # threshold at ordered[n - 1 - above]: `above` exceed
        upper = beta.ppf(CONFIDENCE, above + 1, n - above) if above < n else 1.0
        if upper <= target:
            return float(ordered[n - 1 - above])
    return float(ordered[-1])


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    held_out: np.ndarray,
    target: float = FALSE_UNKNOWN_RATE,
    regions: int = 1,
) -> Novelty:
    """Fit class means and a shrunk shared covariance on ``features`` (training images), and
    the threshold on ``held_out`` (features of in-distribution images not trained on); with
    ``regions``, on each row's regions averaged (``reduce``).

    Raises:
        ValueError: a target outside (0, 1), or no held-out images.
    """
    if not 0 < target < 1:
        raise ValueError(f"false-unknown target {target}: expected between 0 and 1")
    if len(held_out) == 0:
        raise ValueError("the unknown threshold needs held-out in-distribution images")
    from sklearn.covariance import LedoitWolf

    features, labels = reduce(features, regions), np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([features[labels == k].mean(axis=0) for k in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    detector = Novelty(means, precision, 1.0, target, len(held_out), regions)
    threshold = conservative_threshold(detector.scores(held_out), target)
    return Novelty(means, precision, max(threshold, 1e-9), target, len(held_out), regions)
