"""A registered model's answers on its test set, kept beside it (``FILE``), so that the next
retrain's gate reads them instead of running the model again: each model is scored once on a
test set, when it is the candidate (``promotion.score_current`` reads them back).

What is kept is all the gate uses of the current model: its uncalibrated probabilities (for
the metrics and the paired answers), the served probabilities and unknown answers on every
test image (the trust checks), and its unknown answers on the unlike images made from the test
set (``ood.sets``). They are keyed by the test set's fingerprint: a test set with images added
or removed runs the model as before. A version's model, temperature and unknown detector never
change once registered, so neither do its answers on the same images.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.model import registry, training
from imgclf.model.batches import as_inputs

#: The attachment's file name in a registry version.
FILE = "test_answers.npz"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answers:
    """A model's answers on one test set (see the module); ``classes`` is how many classes the
    model answers (its columns)."""

    fingerprint: str
    outputs: np.ndarray  # uncalibrated probabilities, one row a test image
    probabilities: np.ndarray  # as served: after the temperature
    unknown: np.ndarray | None  # answered unknown (bool), one a test image
    unlike_unknown: np.ndarray | None  # answered unknown on the unlike images (bool)
    unlike_digest: str = ""  # of the unlike images (``digest``): another version may make others

    @property
    def complete(self) -> bool:
        """Whether there is all a gate needs (a model without an unknown detector has no
        unknown answers to keep)."""
        return self.unknown is not None and self.unlike_unknown is not None

    @property
    def classes(self) -> int:
        return int(self.outputs.shape[1])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            fingerprint=np.array(self.fingerprint),
            outputs=self.outputs.astype(np.float32),
            probabilities=self.probabilities.astype(np.float32),
            unknown=self.unknown.astype(bool),
            unlike_unknown=self.unlike_unknown.astype(bool),
            unlike_digest=np.array(self.unlike_digest),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> Answers:
        with np.load(io.BytesIO(payload), allow_pickle=False) as kept:
            return cls(
                str(kept["fingerprint"]),
                kept["outputs"],
                kept["probabilities"],
                kept["unknown"],
                kept["unlike_unknown"],
                str(kept["unlike_digest"]),
            )


def unlike_images(dataset: training.Dataset, metadata: dict) -> np.ndarray:
    """The unlike images the trust checks show a model of ``metadata`` (its classes, image
    size, colour mode): noise, shuffled tiles and photo crops made from the test images of its
    classes (``ood.sets``, seeded: the same test set gives the same images)."""
    from imgclf.model import ood

    labels = np.asarray(dataset.test.labels)
    keep = labels < len(metadata["class_names"])
    found = ood.sets(
        as_inputs(np.asarray(dataset.test.images)[keep]),
        tuple(metadata["image_size"]),
        metadata["color_mode"],
        metadata["class_names"],
        other_data=False,
    )
    return np.concatenate([found[name] for name in sorted(found)]).astype(np.float32)


def digest(unlike: np.ndarray) -> str:
    """What identifies a set of unlike images (SHA-256 of their pixels and shape)."""
    found = hashlib.sha256(str(unlike.shape).encode())
    found.update(np.ascontiguousarray(unlike, np.float32).tobytes())
    return found.hexdigest()


def answer(judged, features, outputs, unlike: np.ndarray, fingerprint: str) -> Answers:
    """``judged``'s (a ``Predictor`` with its temperature and unknown detector) answers from
    its one pass over the test set (``features``, ``outputs``) and over ``unlike``."""
    probabilities, unknown, _ = judged.answers_from(features, outputs)
    unlike_unknown = judged.answers_from(*judged.outputs(unlike))[1]
    return Answers(fingerprint, outputs, probabilities, unknown, unlike_unknown, digest(unlike))


def read(
    models_dir: Path, version: str, dataset: training.Dataset, metadata: dict
) -> Answers | None:
    """``version``'s (of ``metadata``) kept answers on ``dataset``'s test set; None where it
    kept none, kept them on other test images or other unlike images (made by another version
    of this code), or the file cannot be read: the model is run instead."""
    payload = registry.attachment(models_dir, version, FILE)
    if payload is None:
        return None
    try:
        kept = Answers.from_bytes(payload)
    except Exception as error:  # truncated, not an npz, another layout
        log.warning(
            "%s's kept test answers are unreadable (%s): running it instead", version, error
        )
        return None
    if kept.fingerprint != training.test_fingerprint(dataset):
        return None
    if len(kept.outputs) != len(dataset.test.labels):
        return None
    if kept.unlike_digest != digest(unlike_images(dataset, metadata)):
        return None
    return kept
