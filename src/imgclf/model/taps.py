"""Which layers of a pretrained EfficientNet-Lite give the classifier its features, chosen on
the training images alone.

ImageNet's last layer suits photos like ImageNet's; on small images unlike them (28-pixel
product photos) the outputs of earlier stages transfer better (measured on Fashion-MNIST with
1,000 training images: 0.838 from the last layer, 0.857 from the last two stages). Which one a
data set wants is not known in advance, so ``choose_tap`` scores each tap
(``efficientnet_lite.TAPS``) by the cross-validated accuracy of a linear classifier on its
pooled features: the test images play no part in the choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from imgclf.model import efficientnet_lite, network

#: The choice looks at most this many training images (a stratified sample): the features of
#: every tap take one pass of the backbone over them.
CHOICE_IMAGES = 2000
#: Folds of the cross-validation (fewer where a class has fewer training images).
FOLDS = 5
#: Inverse L2 strength of the linear classifier on standardised features (the best of 0.01,
#: 0.03 and 0.1 on Fashion-MNIST for every tap; the ranking of taps did not depend on it).
PENALTY_C = 0.01

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TapChoice:
    """The chosen tap and every tap's cross-validated accuracy."""

    tap: str
    scores: dict[str, float]
    images: int
    folds: int

    def describe(self) -> str:
        figures = ", ".join(f"{tap} {score:.3f}" for tap, score in self.scores.items())
        return (
            f"Backbone features from **{self.tap}**: cross-validated accuracy of a linear "
            f"classifier on {self.images} training images ({self.folds} folds): {figures}."
        )


def _sample(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of at most ``CHOICE_IMAGES`` training images, stratified by class."""
    indices = np.arange(len(labels))
    if len(labels) <= CHOICE_IMAGES:
        return indices
    chosen, _ = train_test_split(
        indices, train_size=CHOICE_IMAGES, stratify=labels, random_state=seed
    )
    return np.sort(chosen)


def choose_tap(
    dataset,
    backbone: str,
    backbone_size: int | None = None,
    backbone_weights: str | None = "imagenet",
    seed: int = 1,
) -> TapChoice:
    """Score every tap of ``backbone`` on the training images of ``dataset`` and pick the best
    (the earliest listed on a tie).

    Raises:
        ValueError: ``backbone`` is not an EfficientNet-Lite, or a class has fewer than two
            training images (nothing to cross-validate).
    """
    if backbone not in efficientnet_lite.VARIANTS:
        raise ValueError(f"backbone_tap='auto' needs an EfficientNet-Lite, not {backbone!r}")
    labels = np.asarray(dataset.train.labels)
    folds = min(FOLDS, int(np.bincount(labels).min()))
    if folds < 2:
        raise ValueError("backbone_tap='auto' needs at least two training images of a class")
    chosen = _sample(labels, seed)
    model = network.build_model(
        len(dataset.class_names), dataset.input_shape, backbone=backbone,
        backbone_weights=backbone_weights, backbone_size=backbone_size, backbone_tap="all",
    )  # fmt: skip
    features = network.backbone_features(model, dataset.train.images[chosen])
    top = features.shape[1] - efficientnet_lite.HEAD_FILTERS  # "all" is mid, then top
    columns = {"top": slice(top, None), "mid": slice(0, top), "all": slice(None)}
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = {}
    for tap in efficientnet_lite.TAPS:
        classifier = make_pipeline(
            StandardScaler(), LogisticRegression(C=PENALTY_C, max_iter=2000)
        )
        result = cross_val_score(
            classifier, features[:, columns[tap]], labels[chosen], cv=splitter
        )
        scores[tap] = round(float(result.mean()), 4)
    best = max(efficientnet_lite.TAPS, key=lambda tap: scores[tap])  # first on a tie
    choice = TapChoice(best, scores, len(chosen), folds)
    log.info("backbone tap %s (cross-validated accuracy: %s)", best, scores)
    return choice
