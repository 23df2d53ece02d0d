"""Which layers of a pretrained EfficientNet-Lite give the classifier its features, chosen on
the training images alone.

ImageNet's last layer suits photos like ImageNet's; on small images unlike them (28-pixel
product photos) the outputs of earlier stages transfer better (measured on Fashion-MNIST with
1,000 training images: 0.838 from the last layer, 0.857 from the last two stages). Which one a
data set wants is not known in advance, so ``choose_tap`` scores each tap
(``efficientnet_lite.TAPS``) by the cross-validated accuracy of a linear classifier on its
pooled features (``grid``: pooled on a grid of regions): the test images play no part in the
choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
    train_test_split,
)
from sklearn.pipeline import Pipeline, make_pipeline
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
    """Indices of about ``CHOICE_IMAGES`` training images, stratified by class, with every
    image of a class the stratified draw would leave short of ``FOLDS`` (a new class of a few
    images): cross-validation then sees every class the head is fitted on."""
    labels = np.asarray(labels)
    indices = np.arange(len(labels))
    if len(labels) <= CHOICE_IMAGES:
        return indices
    common = np.bincount(labels)[labels] >= 2  # stratifying needs two of a class
    chosen = indices[common]
    if common.sum() > CHOICE_IMAGES:
        chosen, _ = train_test_split(
            chosen, train_size=CHOICE_IMAGES, stratify=labels[common], random_state=seed
        )
    total = np.bincount(labels)
    sampled = np.bincount(labels[chosen], minlength=len(total))
    short = np.flatnonzero(sampled < np.minimum(total, FOLDS))
    return np.union1d(chosen, indices[np.isin(labels, short)])


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
        len(dataset.class_names),
        dataset.input_shape,
        backbone=backbone,
        backbone_weights=backbone_weights,
        backbone_size=backbone_size,
        backbone_tap=efficientnet_lite.SURVEY,
    )
    features = network.backbone_features(model, dataset.train.images[chosen])
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    by_fold = fold_scores(features, labels[chosen], splitter, network.survey_columns(model))
    scores = {tap: round(float(result.mean()), 4) for tap, result in by_fold.items()}
    best = max(efficientnet_lite.TAPS, key=lambda tap: scores[tap])  # first on a tie
    choice = TapChoice(best, scores, len(chosen), folds)
    log.info("backbone tap %s (cross-validated accuracy: %s)", best, scores)
    return choice


def fold_scores(
    features: np.ndarray, labels: np.ndarray, splitter, columns: dict[str, slice]
) -> dict[str, np.ndarray]:
    """Each tap's accuracy on each fold of ``splitter``: a linear classifier on its
    ``columns`` of ``features`` (a survey model's, ``network.survey_columns``), fitted on the
    other folds."""
    scores = {}
    for tap in efficientnet_lite.TAPS:
        classifier = make_pipeline(
            StandardScaler(), LogisticRegression(C=PENALTY_C, max_iter=2000)
        )
        scores[tap] = cross_val_score(classifier, features[:, columns[tap]], labels, cv=splitter)
    return scores


#: Inverse L2 strengths the linear head is chosen among (by cross-validation).
HEAD_C = (0.01, 0.03, 0.1)


def _linear(c: float, balanced: bool):
    weights = "balanced" if balanced else None
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=3000, class_weight=weights)
    )


@dataclass(frozen=True)
class LinearHead:
    """A logistic regression on standardised features, its L2 strength chosen by
    cross-validation, and the out-of-fold probabilities of that strength (one row per image of
    ``sample``, columns ``present``): how the head answers images it was not fitted on."""

    pipeline: Pipeline
    c: float
    present: np.ndarray
    sample: np.ndarray
    out_of_fold: np.ndarray | None
    scores: dict[float, tuple[float, float]]


def linear_head(features: np.ndarray, labels: np.ndarray, balanced: bool, seed: int) -> LinearHead:
    """The head ``fit_linear_head`` sets, fitted on every row of ``features``; its L2 strength
    is chosen among ``HEAD_C`` by the log loss of out-of-fold answers on at most
    ``CHOICE_IMAGES`` rows (a stratified sample). Deterministic: the same features, labels and
    seed give the same head (``posthoc`` refits it to cross-fit the temperature)."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    chosen = _sample(labels, seed)
    folds = min(FOLDS, int(np.bincount(labels[chosen])[present].min()))
    splitter = StratifiedKFold(max(folds, 2), shuffle=True, random_state=seed)
    scored, answers = {}, {}
    for c in HEAD_C:
        if folds < 2 or len(present) < 2:
            scored[c], answers[c] = (float("nan"), float("nan")), None
            continue
        answers[c] = cross_val_predict(
            _linear(c, balanced),
            features[chosen],
            labels[chosen],
            cv=splitter,
            method="predict_proba",
        )
        right = answers[c][np.arange(len(chosen)), np.searchsorted(present, labels[chosen])]
        accuracy = float((present[answers[c].argmax(1)] == labels[chosen]).mean())
        scored[c] = (accuracy, float(-np.log(np.clip(right, 1e-12, 1)).mean()))
    best = min(HEAD_C, key=lambda c: (np.nan_to_num(scored[c][1], nan=np.inf), -c))
    pipeline = _linear(best, balanced).fit(features, labels)
    return LinearHead(pipeline, best, present, chosen, answers[best], scored)


def fit_linear_head(
    model, features: np.ndarray, labels: np.ndarray, balanced: bool, seed: int
) -> dict:
    """Set the classifier's head to a logistic regression on standardised ``features``
    (the frozen backbone's, one row per image; ``linear_head``): a convex fit, the same on any
    machine, using every image given (no early stopping needs any held out). The scaling is
    folded into the head's weights, so the model stays backbone, dropout, dense softmax.

    Returns:
        ``{"C": ..., "cv_accuracy": ..., "cv_loss": ..., "train_accuracy": ...,
        "train_loss": ...}``.
    """
    labels = np.asarray(labels)
    head = linear_head(features, labels, balanced, seed)
    _fold_into_head(model, head.pipeline, features.shape[1], head.present)
    probabilities = head.pipeline.predict_proba(features)
    rows = np.arange(len(labels))
    right = probabilities[rows, np.searchsorted(head.present, labels)]
    figures = {
        "C": head.c,
        "cv_accuracy": round(head.scores[head.c][0], 4),
        "cv_loss": round(head.scores[head.c][1], 5),
        "train_accuracy": round(
            float((head.present[probabilities.argmax(1)] == labels).mean()), 4
        ),
        "train_loss": round(float(-np.log(np.clip(right, 1e-12, 1)).mean()), 5),
    }
    log.info("linear head on %d images: %s", len(labels), figures)
    return figures


def _fold_into_head(model, pipeline, width: int, present: np.ndarray) -> None:
    """Set the head's weights to the fitted scaler and logistic regression, composed (a
    binary regression as a two-way softmax)."""
    scaler, regression = pipeline[0], pipeline[1]
    classes = network_classes(model)
    kernel = np.zeros((width, classes), np.float32)
    bias = np.full(classes, -5e3, np.float32)  # a class with no image: never chosen
    coef, intercept = regression.coef_, regression.intercept_
    if len(present) == 2:
        coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-1, 1]) * intercept / 2
    kernel[:, present] = (coef / scaler.scale_).T
    bias[present] = intercept - (coef / scaler.scale_) @ scaler.mean_
    model.get_layer(network.HEAD_NAME).set_weights([kernel, bias])


def network_classes(model) -> int:
    """How many classes the classifier's head answers."""
    return int(model.get_layer(network.HEAD_NAME).units)
