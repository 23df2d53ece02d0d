"""Why the model answered what it did: a heat map of the pixels that carried the answer.

Gradient times input (Shrikumar et al., 2016; Ancona et al., 2018): the gradient of the
answered class's log-probability with respect to each input pixel, times the pixel, summed
over the colour channels, in absolute value. It works for any network (the CNN and every
backbone alike, through the resize inside the model), needs one backward pass, and is exact
for the part of the network that is linear around the image. A pixel that is black (0) in the
model's input carries nothing by this measure, so on digits the map lies on the ink. Smoothed
by a 3x3 box and scaled to [0, 1] per image, at the model's input size.
"""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
from PIL import Image

#: One compiled gradient per architecture, as for the forward pass (``prediction``).
_GRADIENTS: dict[str, object] = {}
_LOCK = threading.Lock()


def _compiled_gradient(model):
    import jax
    import jax.numpy as jnp

    key = json.dumps(model.get_config(), sort_keys=True, default=str)
    with _LOCK:
        if key not in _GRADIENTS:

            def answered_log_probability(trainable, non_trainable, images, classes):
                outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
                probabilities = outputs[-1] if isinstance(outputs, list | tuple) else outputs
                picked = probabilities[jnp.arange(images.shape[0]), classes]
                return jnp.log(picked + 1e-12).sum()

            _GRADIENTS[key] = jax.jit(jax.grad(answered_log_probability, argnums=2))
        return _GRADIENTS[key]


def _smooth(maps: np.ndarray) -> np.ndarray:
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="edge")
    height, width = maps.shape[1:]
    return sum(padded[:, r : r + height, c : c + width] for r in range(3) for c in range(3)) / 9


def maps(model, trainable, non_trainable, images: np.ndarray, classes) -> np.ndarray:
    """Heat maps ``(n, h, w)`` in [0, 1] of ``images`` (``(n, h, w, c)`` in [0, 1]) for the
    answered ``classes``."""
    images = np.asarray(images, np.float32)
    gradient = _compiled_gradient(model)
    grads = np.asarray(gradient(trainable, non_trainable, images, np.asarray(classes, np.int32)))
    found = _smooth(np.abs(grads * images).sum(axis=-1))
    peak = found.reshape(len(found), -1).max(axis=1)
    return (found / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def as_png(heat: np.ndarray) -> str:
    """A heat map as a base64 PNG (8-bit grayscale: 255 is the strongest pixel)."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), "L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
