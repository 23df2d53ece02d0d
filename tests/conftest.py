"""Shared fixtures: small real data sets written to temporary folders."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from imgclf import data  # noqa: E402


def write_image(path: Path, size=(12, 10), mode="L", value=128, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    channels = () if mode == "L" else (3,)
    pixels = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    data.prepare_digits(root)
    return root
