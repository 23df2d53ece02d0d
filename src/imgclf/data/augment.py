"""Training-time augmentation as one compiled function per batch shape, on the training device.

The same augmentations and ranges as Keras' ``RandomFlip`` (horizontal), ``RandomRotation``,
``RandomZoom`` and ``RandomTranslation`` with ``fill_mode="constant"``: each image gets a
random flip, a rotation of up to ``rotation`` of a full turn, a zoom in or out by up to
``zoom`` of its size and a shift of up to ``shift`` of its height and width. The four are
composed into one affine map per image and applied with one bilinear resampling
(``jax.scipy.ndimage.map_coordinates``), inside a single ``jax.jit`` function that also turns
the uint8 batch into the model's float input. Keras' layers launch about 190 small operations
from Python for the same batch.

Randomness is a pure function of the seed, the epoch and the batch index (``jax.random``), so a
run is reproducible whatever order batches are prepared in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Augmentation:
    """Augmentation ranges and seed; call it on a uint8 batch to get float32 inputs in [0, 1]."""

    rotation: float = 0.05
    zoom: float = 0.1
    shift: float = 0.1
    flip: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("rotation", "zoom", "shift"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name}={value}: expected 0 to below 1")

    @property
    def active(self) -> bool:
        return bool(self.rotation or self.zoom or self.shift or self.flip)

    def as_dict(self) -> dict:
        return {
            "rotation": self.rotation,
            "zoom": self.zoom,
            "shift": self.shift,
            "flip": self.flip,
        }

    @cached_property
    def _compiled(self):
        import jax

        return jax.jit(self._apply)

    def __call__(self, images, epoch: int, index: int):
        """Augment one batch (``(n, h, w, c)`` uint8, or floats in [0, 1]); returns a JAX
        float32 array in [0, 1]. ``epoch`` and ``index`` pick the random draw."""
        import jax

        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), epoch), index)
        return self._compiled(images, key)

    def _apply(self, images, key):
        import jax
        import jax.numpy as jnp
        from jax.scipy.ndimage import map_coordinates

        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / 255.0
        if not self.active:
            return x
        count, height, width, _ = x.shape
        k_angle, k_zoom, k_dx, k_dy, k_flip = jax.random.split(key, 5)
        angle = jax.random.uniform(k_angle, (count,), minval=-1, maxval=1) * (
            self.rotation * 2 * math.pi
        )
        scale = 1 + jax.random.uniform(k_zoom, (count,), minval=-self.zoom, maxval=self.zoom)
        dx = jax.random.uniform(k_dx, (count,), minval=-1, maxval=1) * self.shift * width
        dy = jax.random.uniform(k_dy, (count,), minval=-1, maxval=1) * self.shift * height
        mirror = jnp.where(jax.random.bernoulli(k_flip, 0.5, (count,)), -1.0, 1.0)
        if not self.flip:
            mirror = jnp.ones((count,))
        rows, cols = jnp.meshgrid(
            jnp.arange(height, dtype=jnp.float32),
            jnp.arange(width, dtype=jnp.float32),
            indexing="ij",
        )
        cy, cx = (height - 1) / 2, (width - 1) / 2

        def source(angle, scale, dx, dy, mirror):
            # from an output pixel back to where it comes from: undo the shift, the zoom, the
            # rotation and the flip, in that order (they were applied the other way round)
            u, v = (cols - cx - dx) * scale, (rows - cy - dy) * scale
            cos, sin = jnp.cos(angle), jnp.sin(angle)
            u, v = cos * u + sin * v, -sin * u + cos * v
            return jnp.stack([v + cy, u * mirror + cx])

        coordinates = jax.vmap(source)(angle, scale, dx, dy, mirror)  # (n, 2, h, w)

        def resample(image, where):  # one image, all channels
            channels = jnp.moveaxis(image, -1, 0)
            moved = jax.vmap(
                lambda channel: map_coordinates(channel, list(where), order=1, mode="constant")
            )(channels)
            return jnp.moveaxis(moved, 0, -1)

        return jax.vmap(resample)(x, coordinates)
