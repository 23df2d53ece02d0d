"""``make bench-quality``: what the models reach on real data, offline, over several seeds: the
bundled digits, Fashion-MNIST (Debian's ``dataset-fashion-mnist``) and a photo-like set of
few RGB product photos a class (``devkit.photoset``); the from-scratch CNN, the pretrained
EfficientNet-Lite0 and ``auto`` (what ``make train`` does: ``choice.choose``), each row with its
accuracy, macro-F1 and ECE (after the temperature fitted as training fits it).

Writes ``reports/bench-quality-<time>.json`` (one entry a row and seed) and the table of
docs/benchmarks.md. Every row trains with the library's own functions (what the train notebook
calls). ``BENCH_QUALITY_SEEDS`` (default 1,2,3) and ``BENCH_QUALITY_ONLY`` (row names) narrow
it; the full-set Fashion-MNIST CNN runs only by name (``make bench-quality-full``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from devkit.bench_quality_table import shown_rows, table
from devkit.bench_train import publish

#: Seeds of every row (BENCH_QUALITY_SEEDS: a comma-separated list).
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class Row:
    """One benchmark row: a data set (and how many images of it), a model, its settings."""

    name: str
    dataset: str  # digits, fashion_mnist, or photos (devkit.photoset: 3 classes, RGB)
    model: str  # cnn, efficientnet_lite0, or auto (what make train does: choice.choose)
    image_size: int
    train_per_class: int | None = None  # None: the whole training split
    test_per_class: int | None = None
    backbone_size: int | None = None
    params: dict = field(default_factory=dict)
    flip: bool = False
    #: augmentation's largest rotation, zoom and shift (``augment.Augmentation``); None: none
    ranges: tuple[float, float, float] | None = (0.05, 0.1, 0.1)
    color_mode: str = "grayscale"


#: The photo-like case: 60 training photos a class, 64 px, as a user's own folder; 200 test
#: photos a class, so that ECE measures the model (on 20 a class, as a user would have, even a
#: calibrated model's ECE is about 0.1: ``small_test_ece`` reports both).
PHOTOS = {"dataset": "photos", "image_size": 64, "color_mode": "rgb"}
PHOTO_TEST_PER_CLASS = 200
#: ECE on few test images: mean over this many draws of ``SMALL_TEST_PER_CLASS`` a class.
SMALL_TEST_PER_CLASS, SMALL_TEST_DRAWS = 20, 50

ROWS = (
    # make train's defaults on the digits (32 px): auto should keep the CNN
    Row("digits-auto", "digits", "auto", 32),
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
    Row(
        "fashion-cnn-1k",
        "fashion_mnist",
        "cnn",
        28,
        100,
        200,
        params={"epochs": 40, "patience": 8},
    ),
    # Lite0's native 224 px, head only: 0.8623 over 3 seeds, about 10 minutes a seed (128 px:
    # 0.852, 188 s of training); training its last two stages as well did not beat the head
    # (docs/benchmarks.md)
    Row(
        "fashion-lite0-1k",
        "fashion_mnist",
        "efficientnet_lite0",
        28,
        100,
        200,
        backbone_size=224,
        params={"fine_tune_epochs": 0},
        flip=True,
    ),
    Row("photos-auto", model="auto", **PHOTOS),
    Row("photos-cnn", model="cnn", **PHOTOS),
    Row("photos-lite0", model="efficientnet_lite0", flip=True, **PHOTOS),
    # the full set: make bench-quality-full (3 to 5 minutes an epoch on one core). 60,000
    # images carry a CNN twice as wide (cnn_width 32: 16 stalled near 0.92); flips and 1-px
    # shifts only: the default rotation and zoom cost it accuracy (0.9082 after 20 epochs).
    # 15 epochs ran all 15 for 0.9348/0.9335/0.9295, still improving: 18
    Row(
        "fashion-cnn",
        "fashion_mnist",
        "cnn",
        28,
        params={"epochs": 18, "patience": 4, "batch_size": 128, "cnn_width": 32},
        flip=True,
        ranges=(0.0, 0.0, 0.05),
    ),
)
#: Rows that only ``make bench-quality-full`` runs (BENCH_QUALITY_ONLY names them).
LONG = {"fashion-cnn"}


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
        if row.dataset == "photos":
            from devkit import photoset

            photoset.write(full, test_per_class=PHOTO_TEST_PER_CLASS)
        elif row.dataset == "digits":
            folders.prepare_digits(full)
        else:
            folders.prepare_public_dataset(row.dataset, full)
    if row.train_per_class is None and row.test_per_class is None:
        return full
    subset = folder / f"{row.dataset}-{row.train_per_class}-{row.test_per_class}"
    if not subset.exists():
        _subset(full, subset, {"train": row.train_per_class, "test": row.test_per_class})
    return subset


def _model_for(row: Row, dataset, params, augmentation, seed: int) -> tuple[str, str, dict]:
    """``(backbone or "", tap, choice)`` of a row: as the train notebook decides (``auto``:
    ``choice.choose``; a backbone's tap by cross-validation)."""
    from imgclf.model import choice, efficientnet_lite, taps

    if row.model == "auto":
        made = choice.choose(dataset, params, augmentation, seed, row.backbone_size)
        print(f"{row.name}: {made.name} ({made.reason}) {made.scores}", flush=True)
        return made.backbone, made.tap or "top", made.as_dict()
    if row.model in efficientnet_lite.VARIANTS:
        found = taps.choose_tap(dataset, row.model, row.backbone_size, "imagenet", seed)
        print(f"{row.name}: tap {found.tap}, cross-validated {found.scores}", flush=True)
        return row.model, found.tap, {}
    return "", "top", {}


def small_test_ece(probabilities: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """ECE on ``SMALL_TEST_PER_CLASS`` test images a class (the size of a user's small test
    set), mean over ``SMALL_TEST_DRAWS`` draws, against its floor: the same on labels drawn
    from the probabilities themselves (a model calibrated by construction), what measurement
    alone gives at that size."""
    from imgclf.model import calibration

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    measured, floor = [], []
    for _ in range(SMALL_TEST_DRAWS):
        drawn = np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == k), SMALL_TEST_PER_CLASS, replace=False)
                for k in np.unique(labels)
            ]
        )
        answers = np.asarray(probabilities[drawn], np.float64)
        measured.append(calibration.reliability(answers, labels[drawn]).ece)
        cumulative = np.cumsum(answers / answers.sum(1, keepdims=True), axis=1)
        simulated = (rng.random((len(drawn), 1)) > cumulative).sum(1).clip(0, answers.shape[1] - 1)
        floor.append(calibration.reliability(answers, simulated).ece)
    return {
        "images": int(SMALL_TEST_PER_CLASS * len(np.unique(labels))),
        "ece": round(float(np.mean(measured)), 4),
        "floor": round(float(np.mean(floor)), 4),
    }


def _calibration(fitted: dict, probabilities: np.ndarray, labels, seed: int) -> dict:
    """A row's calibration figures: ECE on all its test images, and on few (``small_test_ece``,
    where there are enough)."""
    from imgclf.model import calibration

    labels = np.asarray(labels)
    few = None
    if len(labels) >= 2 * SMALL_TEST_PER_CLASS * len(np.unique(labels)):
        served = calibration.scale(probabilities, fitted["temperature"])
        few = small_test_ece(served, labels, seed)
    return {
        "ece": fitted["ece"],
        "ece_uncalibrated": fitted["ece_uncalibrated"],
        "temperature": fitted["temperature"],
        "calibrated_on": fitted["fitted_on"],
        "calibrated_out_of_fold": fitted["out_of_fold"],
        "ece_few_test_images": few,
    }


def run_row(row: Row, folder: Path, seed: int) -> dict:
    """Train and test one row with one seed; its figures (accuracy, macro-F1, ECE)."""
    from imgclf.data import augment
    from imgclf.model import network, posthoc, training

    network.set_seed(seed)
    data_dir = _data(row, folder)
    dataset = training.load_dataset(
        data_dir, row.image_size, row.color_mode, cache_dir=folder / ".cache" / row.name
    )
    params = network.TrainParams(**row.params)
    began = time.perf_counter()
    cnn_augmentation = augment.Augmentation(0.05, 0.1, 0.1, False, seed=seed)
    backbone, tap, chosen = _model_for(row, dataset, params, cnn_augmentation, seed)
    model = network.build_model(
        len(dataset.class_names),
        dataset.input_shape,
        params.l2,
        params.dropout,
        backbone=backbone or None,
        backbone_weights="imagenet" if backbone else None,
        backbone_size=row.backbone_size,
        backbone_tap=tap,
        filters=network.cnn_filters(params.cnn_width),
    )
    network.compile_model(model, params.learning_rate)
    augmentation = None
    if row.ranges is not None:
        flip = row.flip if row.model != "auto" else bool(backbone)
        augmentation = augment.Augmentation(*row.ranges, flip, seed=seed)
    history = training.fit(model, dataset, params, augmentation, seed, verbose=0)
    train_seconds = time.perf_counter() - began
    metrics, probabilities = training.evaluate(model, dataset.test)
    trusted = posthoc.fit(model, dataset, params, seed, probabilities)
    return {
        "name": row.name,
        "seed": seed,
        "dataset": row.dataset,
        "model": row.model,
        "chosen": backbone or "cnn",
        "choice": chosen,
        "pretrained": bool(backbone),
        "train_images": len(dataset.train.labels),
        "test_images": len(dataset.test.labels),
        "accuracy": round(float(metrics["accuracy"]), 4),
        "f1_macro": round(float(metrics["f1_macro"]), 4),
        **_calibration(trusted.calibration, probabilities, dataset.test.labels, seed),
        "train_seconds": round(train_seconds, 1),
        "epochs_run": len(history["loss"]),
        "image_size": row.image_size,
        "backbone_size": row.backbone_size,
        "backbone_tap": tap if backbone else None,
        "augment": augmentation.as_dict() if augmentation else None,
        "params": row.params,
        "date": datetime.now(UTC).isoformat(),
    }


MARKERS = ("<!-- bench-quality -->", "<!-- /bench-quality -->")
LONG_MARKERS = ("<!-- bench-quality-full -->", "<!-- /bench-quality-full -->")


#: XLA on one thread: a CPU process of the bench when several run at once (BENCH_QUALITY_JOBS).
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _say(r: dict) -> None:
    print(
        f"{r['name']} seed {r['seed']}: {r['chosen']}, accuracy {r['accuracy']:.4f}, "
        f"ECE {r['ece']:.3f} ({r['train_images']} training, {r['test_images']} "
        f"test images, {r['train_seconds']:.0f} s)",
        flush=True,
    )


def _one(row: Row, seed: int, folder: Path) -> dict:
    """One row and seed in a process of its own (XLA on one thread); its figures."""
    import json
    import subprocess

    out = folder / f"{row.name}-{seed}.json"
    flags = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD}".strip()
    child = {"BENCH_QUALITY_ONLY": row.name, "BENCH_QUALITY_SEEDS": str(seed)}
    child |= {"BENCH_QUALITY_FOLDER": str(folder), "BENCH_QUALITY_OUT": str(out)}
    command = [sys.executable, "-m", "devkit.bench_quality"]
    subprocess.run(command, env={**os.environ, **child, "XLA_FLAGS": flags}, check=True)
    result = json.loads(out.read_text())
    _say(result)
    return result


def run_all(
    rows: list[Row], seeds: list[int], folder: Path, jobs: int = 1
) -> tuple[list[dict], list[str]]:
    """Every row with every seed, in order; ``jobs`` > 1 runs that many at once, each in a
    process of its own with XLA on one thread: on 2 cores the wide CNN's epoch took 40 s with
    two threads and 57 s with one, so two processes get through 1.4x the work of one.

    Returns:
        ``(results, failed)``: the figures of every row and seed that finished, and a line for
        each child process that failed (only with ``jobs`` > 1; one process raises instead).
    """
    if jobs <= 1:
        results = []
        for row in rows:
            for seed in seeds:
                results.append(run_row(row, folder, seed))
                _say(results[-1])
        return results, []
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from imgclf.model import training

    for row in rows:  # the data and its cache, written once before the processes share them
        cache = folder / ".cache" / row.name
        training.load_dataset(_data(row, folder), row.image_size, row.color_mode, cache_dir=cache)
    with ThreadPoolExecutor(jobs) as pool:
        runs = {(r.name, s): pool.submit(_one, r, s, folder) for r in rows for s in seeds}
        results, failed = [], []
        for (name, seed), run in runs.items():
            try:
                results.append(run.result())
            except subprocess.CalledProcessError as error:
                failed.append(f"{name} seed {seed} (exit {error.returncode})")
    return results, failed


def main() -> int:
    only = {n for n in os.environ.get("BENCH_QUALITY_ONLY", "").split(",") if n}
    seeds = [int(s) for s in os.environ.get("BENCH_QUALITY_SEEDS", "").split(",") if s]
    rows = [row for row in ROWS if row.name in only or (not only and row.name not in LONG)]
    if os.environ.get("BENCH_QUALITY_OUT"):  # one row and seed, for run_all's parent
        import json

        result = run_row(rows[0], Path(os.environ["BENCH_QUALITY_FOLDER"]), seeds[0])
        Path(os.environ["BENCH_QUALITY_OUT"]).write_text(json.dumps(result))
        return 0
    began = time.perf_counter()
    jobs = int(os.environ.get("BENCH_QUALITY_JOBS", "1"))
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder:
        results, failed = run_all(rows, seeds or list(SEEDS), Path(folder), jobs)
    if not results:
        print(f"bench-quality: nothing finished ({', '.join(failed)})", file=sys.stderr)
        return 1
    record = {
        "date": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "total_seconds": round(time.perf_counter() - began, 1),
        "processes_at_once": jobs,
        "rows": results,
    }
    minutes = record["total_seconds"] / 60
    markers = LONG_MARKERS if only and only <= LONG else MARKERS
    target = "make bench-quality-full" if markers == LONG_MARKERS else "make bench-quality"
    caption = (
        f"`{target}`: {record['cpus']} cores, {minutes:.1f} minutes in all"
        f"{f' ({jobs} processes at once)' if jobs > 1 else ''}; {record['date'][:10]}."
    )
    kept = {}
    if only and markers == MARKERS:  # a partial run: the other rows stay as the page has them
        from devkit.bench_train import BENCHMARKS

        measured = sorted({r["name"] for r in results})
        shown = shown_rows(BENCHMARKS.read_text(), MARKERS)
        kept = {n: line for n, line in shown.items() if n not in measured}
        if kept:
            caption += f" Rows {', '.join(measured)} from this run; the others as measured before."
    if failed:  # the seeds that finished are written and shown; the run still fails
        record["failed"] = failed
        caption += f" Failed, not shown: {', '.join(failed)}."
    publish(
        "bench-quality",
        record,
        f"{caption}\n\n{table(results, kept, tuple(r.name for r in ROWS))}",
        markers,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
