"""Simple image statistics, shared by the EDA notebook and the production prediction log.

Both sides use these functions so that training data and production inputs are compared on
exactly the same footing (brightness, contrast, edge density of the preprocessed image).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def header(source: bytes | str | Path) -> dict:
    """Return ``width``, ``height``, ``format`` and ``mode`` read from the file header only.

    Raises:
        PIL.UnidentifiedImageError: not an image.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with Image.open(stream) as image:
        return {
            "width": image.width,
            "height": image.height,
            "format": image.format,
            "mode": image.mode,
        }


def brightness_contrast(image: np.ndarray) -> dict[str, float]:
    """Return brightness (mean) and contrast (standard deviation) of one preprocessed image.

    The two figures the prediction log keeps; cheap enough for every request (``pixel_statistics``
    adds edge density, which needs a gradient).
    """
    gray = image[..., 0] if image.shape[-1] == 1 else np.asarray(image).mean(axis=-1)
    return {"brightness": float(gray.mean()), "contrast": float(gray.std())}


def pixel_statistics(image: np.ndarray) -> dict[str, float]:
    """Return brightness (mean), contrast (standard deviation) and edge density of one image.

    Args:
        image: a preprocessed image, ``(h, w, c)`` with values in [0, 1].

    Returns:
        ``brightness`` and ``contrast`` in [0, 1]; ``edge_density``, the fraction of pixels
        whose gradient magnitude exceeds 0.1 (a cheap texture measure).
    """
    gray = np.asarray(image, dtype=np.float32).mean(axis=-1)
    gy, gx = np.gradient(gray)
    return {
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "edge_density": float((np.hypot(gx, gy) > 0.1).mean()),
    }


def batch_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Return ``pixel_statistics`` for each image of a batch, one array per statistic.

    ``images`` may be floats in [0, 1] or uint8 (e.g. the memory-mapped cache: read one image
    at a time, never whole).
    """
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    rows = [pixel_statistics(np.asarray(image, dtype=np.float32) / scale) for image in images]
    return {key: np.asarray([row[key] for row in rows]) for key in rows[0]} if rows else {}


def file_sizes(paths: Sequence[Path]) -> np.ndarray:
    """Return ``(width, height)`` of each file from its header; unreadable files are left out."""
    sizes = []
    for path in paths:
        try:
            info = header(path)
        except Exception:
            continue
        sizes.append((info["width"], info["height"]))
    return np.asarray(sizes, dtype=int).reshape(-1, 2)
