"""What a trained model knows about its own answers, fitted after every training and retraining
on images it has not trained on: a temperature that calibrates its probabilities
(``calibration``) and a detector of images unlike its classes (``novelty``).

Both use the validation split (held out from training by ``training.training_indices``, so
never trained on): the temperature minimises its negative log-likelihood, the unknown threshold
is set on its distances. ECE is then measured on the test images, before and after scaling. The
class means and covariance of the detector come from the training images' features.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from imgclf.model import calibration, network, novelty
from imgclf.model.batches import as_inputs

#: The detector's class statistics are fitted on at most this many training images.
MAX_FIT_IMAGES = 20_000


def with_features(model: keras.Model) -> keras.Model:
    """The classifier with two outputs: the pooled features its head reads, and its
    probabilities (the same layers and weights: one forward pass gives both)."""
    features = model.get_layer(network.FEATURES_NAME).input
    return keras.Model(model.input, [features, model.output], name=f"{model.name}_features")


def features_and_probabilities(model: keras.Model, images, batch_size: int = 128):
    """``(features, probabilities)`` of ``images`` (inference mode), batch by batch."""
    both = with_features(model)
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        found, answered = both.predict_on_batch(
            as_inputs(np.asarray(images[start : start + batch_size]))
        )
        features.append(np.asarray(found, np.float32))
        probabilities.append(np.asarray(answered, np.float32))
    return np.concatenate(features), np.concatenate(probabilities)


@dataclass(frozen=True)
class Trust:
    """The fitted temperature and its ECE figures, and the unknown detector."""

    calibration: dict
    novelty: novelty.Novelty

    def metadata(self) -> dict:
        """What the registry version's metadata records."""
        return {"calibration": self.calibration, "unknown": self.novelty.summary()}

    def attachments(self) -> dict[str, bytes]:
        """The files the registry version keeps beside its model."""
        return {novelty.FILE: self.novelty.to_bytes()}


def fit(
    model: keras.Model,
    dataset,
    params: network.TrainParams,
    seed: int,
    test_probabilities: np.ndarray,
    false_unknown: float = novelty.FALSE_UNKNOWN_RATE,
) -> Trust:
    """Fit the temperature and the unknown detector of a trained model (see the module
    docstring); ``test_probabilities`` are the model's on ``dataset.test`` (uncalibrated)."""
    from imgclf.model import training

    labels = np.asarray(dataset.train.labels)
    train_part, validation, _ = training.training_indices(labels, params, seed)
    fit_on = np.unique(train_part)
    if len(fit_on) > MAX_FIT_IMAGES:
        fit_on = np.sort(np.random.default_rng(seed).choice(fit_on, MAX_FIT_IMAGES, replace=False))
    train_features, _ = features_and_probabilities(model, dataset.train.images[fit_on])
    held_features, held_probabilities = features_and_probabilities(
        model, dataset.train.images[validation]
    )
    fitted = calibration.calibrate(
        (held_probabilities, labels[validation]), (test_probabilities, dataset.test.labels)
    )
    detector = novelty.fit(train_features, labels[fit_on], held_features, false_unknown)
    return Trust(fitted, detector)
