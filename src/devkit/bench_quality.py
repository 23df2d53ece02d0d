"""``make bench-quality``: what the models reach on real data, offline: the bundled digits and
Fashion-MNIST (Debian's ``dataset-fashion-mnist``), the from-scratch CNN and the pretrained
EfficientNet-Lite0, on the full training set and with few labels.

Writes ``reports/bench-quality.json`` (``rows``: dataset, model, pretrained, train_images,
test_images, accuracy, f1_macro, train_seconds, and the settings of each row) and prints a
Markdown table for docs/benchmarks.md. Every row trains with the library's own functions (what the
train notebook calls), seed 1. ``BENCH_QUALITY_ONLY`` (a comma-separated list of row names)
runs some rows only.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devkit.bench_train import publish

SEED = 1


@dataclass(frozen=True)
class Row:
    """One benchmark row: a data set (and how many images of it), a model, its settings."""

    name: str
    dataset: str
    model: str
    image_size: int
    train_per_class: int | None = None  # None: the whole training split
    test_per_class: int | None = None
    backbone_size: int | None = None
    params: dict = field(default_factory=dict)
    flip: bool = False
    augment: bool = True

    @property
    def pretrained(self) -> bool:
        return self.model != "cnn"


ROWS = (
    # cut for the time budget: 40 epochs at patience 8 ran 39 (128 s) for 0.9972
    Row("digits-cnn", "digits", "cnn", 28, params={"epochs": 25, "patience": 5}),
    Row(
        "digits-lite0",
        "digits",
        "efficientnet_lite0",
        28,
        backbone_size=96,
        params={"fine_tune_epochs": 0},
    ),
    # 60,000 images need no augmentation for 0.90; 5 epochs keep the run inside 25 minutes
    # on 2 cores (0.9178 measured at 7 epochs in 886 to 1,017 s: this row's time varies by
    # 30 % between runs; 0.9032 at 12 epochs with augmentation, 1,451 s).
    Row(
        "fashion-cnn",
        "fashion_mnist",
        "cnn",
        28,
        params={"epochs": 5, "patience": 3, "batch_size": 128},
        augment=False,
    ),
    Row(
        "fashion-cnn-1k",
        "fashion_mnist",
        "cnn",
        28,
        100,
        200,
        params={"epochs": 40, "patience": 8},
    ),
    Row(
        "fashion-lite0-1k",
        "fashion_mnist",
        "efficientnet_lite0",
        28,
        100,
        200,
        backbone_size=128,
        params={"fine_tune_epochs": 0},
        flip=True,
    ),
)


def _subset(source: Path, target: Path, per_class: dict[str, int | None]) -> Path:
    """``target`` with the first ``per_class[split]`` images of each class of ``source``
    (hard links: no copies); the whole split where that is None."""
    for split, count in per_class.items():
        for folder in sorted((source / split).iterdir()):
            if not folder.is_dir():
                continue
            (target / split / folder.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(folder.iterdir())[:count]:
                os.link(image, target / split / folder.name / image.name)
    return target


def _data(row: Row, folder: Path) -> Path:
    from imgclf.data import folders

    full = folder / row.dataset
    if not full.exists():
        if row.dataset == "digits":
            folders.prepare_digits(full)
        else:
            folders.prepare_public_dataset(row.dataset, full)
    if row.train_per_class is None and row.test_per_class is None:
        return full
    subset = folder / f"{row.dataset}-{row.train_per_class}-{row.test_per_class}"
    if not subset.exists():
        _subset(full, subset, {"train": row.train_per_class, "test": row.test_per_class})
    return subset


def run_row(row: Row, folder: Path) -> dict:
    """Train and test one row; its figures."""
    from imgclf.data import augment
    from imgclf.model import efficientnet_lite, network, taps, training

    network.set_seed(SEED)
    data_dir = _data(row, folder)
    dataset = training.load_dataset(
        data_dir, row.image_size, "grayscale", cache_dir=folder / ".cache" / row.name
    )
    params = network.TrainParams(**row.params)
    began = time.perf_counter()
    tap = "top"
    if row.model in efficientnet_lite.VARIANTS:  # as the train notebook's backbone_tap="auto"
        choice = taps.choose_tap(dataset, row.model, row.backbone_size, "imagenet", SEED)
        tap = choice.tap
        print(f"{row.name}: tap {tap}, cross-validated {choice.scores}", flush=True)
    model = network.build_model(
        len(dataset.class_names),
        dataset.input_shape,
        params.l2,
        params.dropout,
        backbone=None if row.model == "cnn" else row.model,
        backbone_weights=None if row.model == "cnn" else "imagenet",
        backbone_size=row.backbone_size,
        backbone_tap=tap,
    )
    network.compile_model(model, params.learning_rate)
    augmentation = None
    if row.augment:
        augmentation = augment.Augmentation(0.05, 0.1, 0.1, row.flip, seed=SEED)
    history = training.fit(model, dataset, params, augmentation, SEED, verbose=0)
    train_seconds = time.perf_counter() - began
    metrics, _ = training.evaluate(model, dataset.test)
    return {
        "name": row.name,
        "dataset": row.dataset,
        "model": row.model,
        "pretrained": row.pretrained,
        "train_images": len(dataset.train.labels),
        "test_images": len(dataset.test.labels),
        "accuracy": round(float(metrics["accuracy"]), 4),
        "f1_macro": round(float(metrics["f1_macro"]), 4),
        "train_seconds": round(train_seconds, 1),
        "epochs_run": len(history["loss"]),
        "image_size": row.image_size,
        "backbone_size": row.backbone_size,
        "backbone_tap": tap if row.pretrained else None,
        "augment": row.augment,
        "params": row.params,
    }


MARKERS = ("<!-- bench-quality -->", "<!-- /bench-quality -->")


def table(rows: list[dict]) -> str:
    """The table of docs/benchmarks.md."""
    lines = [
        "| data set | model | train images | test images | accuracy | macro-F1 | training |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        model = "EfficientNet-Lite0, ImageNet" if r["pretrained"] else "CNN from scratch"
        if r["backbone_size"]:
            model += f" ({r['backbone_size']} px, {r['backbone_tap']} features)"
        lines.append(
            f"| {r['dataset']} | {model} | {r['train_images']:,} | {r['test_images']:,} | "
            f"{r['accuracy']:.4f} | {r['f1_macro']:.4f} | {r['train_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> int:
    only = {n for n in os.environ.get("BENCH_QUALITY_ONLY", "").split(",") if n}
    rows = [row for row in ROWS if not only or row.name in only]
    results = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder:
        for row in rows:
            results.append(run_row(row, Path(folder)))
            r = results[-1]
            print(
                f"{r['name']}: accuracy {r['accuracy']:.4f}, macro-F1 {r['f1_macro']:.4f} "
                f"({r['train_images']} training, {r['test_images']} test images, "
                f"{r['train_seconds']:.0f} s)",
                flush=True,
            )
    record = {
        "date": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "total_seconds": round(time.perf_counter() - began, 1),
        "rows": results,
    }
    minutes = record["total_seconds"] / 60
    caption = (
        f"`make bench-quality`: seed 1, {record['cpus']} cores, {minutes:.1f} minutes in all; "
        f"{record['date'][:10]}."
    )
    publish("bench-quality", record, f"{caption}\n\n{table(results)}", MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
