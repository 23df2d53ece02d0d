"""Out-of-distribution sets that ship offline, and how well a served model's "unknown" answer
tells them from its own test images (AUROC, and the share of them accepted as known when 95 %
of the test images are: FPR at 95 % recall).

- ``noise``: uniform random pixels.
- ``shuffled patches``: the test images cut into a 4x4 grid whose tiles are shuffled (the
  pixels of the data set, without its shapes: a near, hard set).
- ``photos``: square crops of the three real photos bundled with scikit-learn and matplotlib
  (a pagoda, a flower, Grace Hopper).
- ``fashion-mnist``: 500 Fashion-MNIST test images, where Debian's ``dataset-fashion-mnist``
  is installed (another data set; skipped when the model is a Fashion-MNIST model).
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data.preprocessing import decode

PHOTOS = (
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


def photo_crops(per_photo: int = 40, seed: int = 0) -> list[bytes]:
    """Square crops (48 px to the photo's height) of the bundled photos, as PNG files."""
    rng = np.random.default_rng(seed)
    crops = []
    for package, relative in PHOTOS:
        path = Path(importlib.import_module(package).__file__).parent / relative
        image = Image.open(path).convert("RGB")
        for _ in range(per_photo):
            side = int(rng.integers(48, min(image.size)))
            x = int(rng.integers(0, image.size[0] - side + 1))
            y = int(rng.integers(0, image.size[1] - side + 1))
            buffer = io.BytesIO()
            image.crop((x, y, x + side, y + side)).save(buffer, "PNG")
            crops.append(buffer.getvalue())
    return crops


def _shuffled_patches(images: np.ndarray, rng, grid: int = 4) -> np.ndarray:
    out = np.array(images, copy=True)
    height, width = out.shape[1] // grid * grid, out.shape[2] // grid * grid
    tile_h, tile_w = height // grid, width // grid
    for image in out:
        tiles = [
            image[r : r + tile_h, c : c + tile_w].copy()
            for r in range(0, height, tile_h)
            for c in range(0, width, tile_w)
        ]
        order = rng.permutation(len(tiles))
        for slot, index in enumerate(order):
            r, c = divmod(slot, grid)
            image[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w] = tiles[index]
    return out


def _fashion(size: tuple[int, int], color_mode: str, count: int) -> np.ndarray | None:
    from imgclf.data import folders

    source = folders.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    if not source.is_file():
        return None
    images = []
    for pixels in folders.read_idx(source)[:count]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        images.append(decode(buffer.getvalue(), size, color_mode).array)
    return np.stack(images)


def sets(
    test_images: np.ndarray,
    size: tuple[int, int],
    color_mode: str,
    class_names,
    seed: int = 0,
    other_data: bool = True,
) -> dict[str, np.ndarray]:
    """The out-of-distribution sets for a model of ``size`` and ``color_mode`` (float images
    in [0, 1], as ``preprocessing.decode`` gives them); ``other_data=False`` leaves out the
    installed data sets (the gate's set must not depend on what a machine has installed)."""
    rng = np.random.default_rng(seed)
    shape = test_images.shape[1:]
    found = {
        "noise": rng.random((200, *shape), dtype=np.float32),
        "shuffled patches": _shuffled_patches(test_images[:200], rng),
        "photos": np.stack([decode(c, size, color_mode).array for c in photo_crops(seed=seed)]),
    }
    if other_data and "sneaker" not in {str(name) for name in class_names}:
        fashion = _fashion(size, color_mode, 500)
        if fashion is not None:
            found["fashion-mnist"] = fashion
    return found


def report(predictor, test_images: np.ndarray, found: dict[str, np.ndarray]) -> list[dict]:
    """Per set: images, the share answered unknown, AUROC of the unknown score against the
    test images, and the share accepted as known at the score that keeps 95 % of the test
    images known (FPR at 95 % recall)."""
    from sklearn.metrics import roc_auc_score

    _, known_flags, known = predictor.answers(test_images)
    cut = np.quantile(known, 0.95)
    rows = [
        {
            "set": "test images (in distribution)",
            "images": len(known),
            "unknown": round(float(known_flags.mean()), 4),
            "auroc": None,
            "fpr_at_95_recall": None,
        }
    ]
    for name, images in found.items():
        _, flags, scores = predictor.answers(images.astype(np.float32))
        truth = np.r_[np.zeros(len(known)), np.ones(len(scores))]
        rows.append(
            {
                "set": name,
                "images": len(scores),
                "unknown": round(float(flags.mean()), 4),
                "auroc": round(float(roc_auc_score(truth, np.r_[known, scores])), 4),
                "fpr_at_95_recall": round(float((scores <= cut).mean()), 4),
            }
        )
    return rows
