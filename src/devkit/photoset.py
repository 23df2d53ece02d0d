"""A small photo-like data set, offline: few RGB product photos a class, as a user's own folder
of photos would be (what ``backbone="auto"`` must get right).

Fashion-MNIST's product photos (Debian's ``dataset-fashion-mnist``), three classes, each image
enlarged, its product coloured with a random hue and set on a random light background with a
little noise, saved as JPEG in ``train/`` and ``test/`` class folders. A CNN from scratch must
learn from a handful of images that colour means nothing; pretrained features already know.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data import folders

#: The classes kept (Fashion-MNIST's names): look-alike garments and a shoe.
CLASSES = ("tshirt_top", "dress", "coat")


def _photo(grey: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """One 28-pixel grey product image as a ``size``-pixel coloured photo."""
    shape = np.asarray(Image.fromarray(grey).resize((size, size), Image.BICUBIC), np.float32)
    alpha = (shape / 255.0)[..., None]
    product = rng.uniform(0.15, 0.95, 3) * 255
    background = rng.uniform(0.6, 1.0, 3) * 255
    shade = np.linspace(0.85, 1.0, size)[:, None, None]  # light from above
    pixels = alpha * product * (0.6 + 0.4 * alpha) + (1 - alpha) * background * shade
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write(
    data_dir: Path,
    train_per_class: int = 60,
    test_per_class: int = 20,
    size: int = 64,
    seed: int = 1,
    source: Path = folders.FASHION_MNIST_DIR,
) -> Path:
    """Write the set under ``data_dir`` (``train/<class>/*.jpg``, ``test/<class>/*.jpg``).

    Raises:
        FileNotFoundError: Fashion-MNIST is not installed (``apt-get install
            dataset-fashion-mnist``).
    """
    splits = folders._fashion_mnist_offline(Path(source))
    if splits is None:
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {source}: apt-get install dataset-fashion-mnist"
        )
    rng = np.random.default_rng(seed)
    wanted = {"train": train_per_class, "test": test_per_class}
    for split, (images, labels) in splits.items():
        for name in CLASSES:
            members = np.flatnonzero(labels == folders.FASHION_MNIST_CLASSES.index(name))
            folder = Path(data_dir) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in rng.choice(members, wanted[split], replace=False):
                photo = _photo(images[index], size, rng)
                photo.save(folder / f"{name}_{index:05d}.jpg", quality=90)
    return Path(data_dir)
