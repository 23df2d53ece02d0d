"""Serving-side prediction: one loaded registry version behind a jit-compiled forward pass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgclf import registry
from imgclf.preprocessing import load_image


@dataclass
class Prediction:
    """One image's result: the label, its probability and every class's probability."""

    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class Predictor:
    """A loaded model version with a jitted, inference-mode forward pass.

    Build one with ``Predictor.load``; ``predict_bytes`` and ``predict_images`` are safe to call
    from one thread at a time per predictor (each gunicorn worker holds its own).
    """

    version: str
    metadata: dict
    model: object
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def __post_init__(self) -> None:
        import jax

        model = self.model
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def forward(images):
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
            return outputs

        self._forward = jax.jit(forward)

    @classmethod
    def load(cls, models_dir: Path, version: str | None = None) -> Predictor:
        """Load a version (default: the current one).

        Raises:
            registry.RegistryError: no such version, or no current model.
        """
        os.environ.setdefault("KERAS_BACKEND", "jax")
        from imgclf.model import load_model

        version = version or registry.current_version(models_dir)
        if version is None:
            raise registry.RegistryError(f"no current model in {models_dir}; run `make train`")
        metadata = registry.metadata(models_dir, version)
        return cls(version, metadata, load_model(registry.model_path(models_dir, version)))

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.metadata["image_size"])

    @property
    def color_mode(self) -> str:
        return self.metadata["color_mode"]

    def preprocess(self, source: bytes | str | Path) -> np.ndarray:
        """Decode one image exactly as training did (see ``preprocessing.load_image``)."""
        return load_image(source, self.image_size, self.color_mode)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Return probabilities for preprocessed images ``(n, h, w, c)``.

        Batches are padded to a power of two so that only a few shapes are ever compiled.
        """
        count = len(images)
        padded = 1 << max(0, (count - 1).bit_length())
        if padded != count:
            filler = np.zeros((padded - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, filler])
        return np.asarray(self._forward(images))[:count]

    def predict_bytes(self, payloads: list[bytes]) -> list[Prediction]:
        """Decode and classify encoded images.

        Raises:
            preprocessing.ImageDecodeError: one of the payloads is not a readable image.
        """
        images = np.stack([self.preprocess(payload) for payload in payloads])
        return [self._describe(row) for row in self.predict_images(images)]

    def _describe(self, probabilities: np.ndarray) -> Prediction:
        best = int(np.argmax(probabilities))
        names = self.class_names
        return Prediction(
            names[best],
            float(probabilities[best]),
            {name: float(p) for name, p in zip(names, probabilities, strict=True)},
        )
