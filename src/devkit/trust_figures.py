"""The pictures of docs/trust.md, of what a model knows about its answers: the reliability
diagram of a model (before and after temperature scaling) and heat maps of a digits model on
its own test images.

    python -m devkit.trust_figures --reliability MODELS_DIR --saliency MODELS_DIR --data DIR

Writes ``docs/reliability.png`` and ``docs/saliency.png`` (the current version of each models
folder; ``--data`` is the digits data folder whose test images are explained).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from imgclf import figures
from imgclf.data.preprocessing import decode
from imgclf.model.prediction import Predictor

DOCS = Path(__file__).resolve().parents[2] / "docs"


def reliability(models_dir: Path, target: Path) -> Path:
    predictor = Predictor.load(models_dir)
    figure = figures.plot_reliability(predictor.metadata["calibration"])
    figure.savefig(target, dpi=110, bbox_inches="tight")
    return target


def saliency(models_dir: Path, data_dir: Path, target: Path, count: int = 8) -> Path:
    import matplotlib.pyplot as plt

    predictor = Predictor.load(models_dir)
    files = [sorted((data_dir / "test" / str(digit)).glob("*.png"))[0] for digit in range(count)]
    images = np.stack(
        [decode(f.read_bytes(), predictor.image_size, predictor.color_mode).array for f in files]
    )
    probabilities = predictor.predict_images(images)
    heat = predictor.saliency(images, probabilities.argmax(axis=1))
    figure, axes = plt.subplots(2, count, figsize=(1.4 * count, 3.2))
    for column in range(count):
        axes[0, column].imshow(images[column, ..., 0], cmap="gray")
        axes[0, column].set_title(f"'{predictor.class_names[probabilities[column].argmax()]}'")
        axes[1, column].imshow(images[column, ..., 0], cmap="gray")
        axes[1, column].imshow(heat[column], cmap="Reds", alpha=0.6)
        for row in (0, 1):
            axes[row, column].axis("off")
    figure.suptitle("digit test images, and where the answer came from (gradient x input)")
    figure.savefig(target, dpi=110, bbox_inches="tight")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reliability", type=Path, required=True)
    parser.add_argument("--saliency", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args(argv)
    print("written:", reliability(args.reliability, DOCS / "reliability.png"))
    print("written:", saliency(args.saliency, args.data, DOCS / "saliency.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
