"""``make bench-head``: head-only training on a pretrained backbone, with its features computed
once per image (``imgclf.model.featurememo``) against computed at every read
(``IMGCLF_FEATURE_MEMO=0``), side by side.

The photo-like set (``devkit.photoset``: 3 classes, 60 training and 20 test photos a class, 64
px) goes the way notebook 02 takes it with a pretrained backbone and ``fine_tune_epochs=0``:
the tap chosen by cross-validation (``taps.choose_tap``), the head fitted (``training.fit``),
the test photos answered (``training.evaluate``), the temperature and the unknown detector
fitted (``posthoc.fit``). Each run is a process of its own (its own compilation, its own
memo); ``BENCH_HEAD_ROUNDS`` (2) rounds each run off and on, in alternating order. Every
phase's seconds and the images the backbone computed are kept; the speed-up is the median of
the rounds' ratios. The two runs must give the same model: their accuracy and temperature
are compared.

Writes ``reports/bench-head-<time>.json`` and the table in docs/benchmarks.md (``MARKERS``).
Settings: ``BENCH_HEAD_ROUNDS`` (2), ``BENCH_HEAD_SIZE`` (224: Lite0's native side).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from devkit.bench_train import _environment, child, publish

MARKERS = ("<!-- bench-head -->", "<!-- /bench-head -->")
PHASES = ("tap choice", "head", "test", "post-hoc")


def run(data_dir: Path, size: int) -> dict:
    """One run of the head-only path on ``data_dir``: seconds a phase, backbone images."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from imgclf.model import network, posthoc, taps, training

    computed = [0]
    real = network.predict_proba

    def counting(model, images, *args, **kwargs):
        if model.name in ("features_of", "imgclf"):  # the backbone ran on these images
            computed[0] += len(images)
        return real(model, images, *args, **kwargs)

    network.predict_proba = counting
    dataset = training.load_dataset(data_dir, 64, "rgb")
    params = network.TrainParams(fine_tune_epochs=0)
    seconds = {}
    started = time.perf_counter()
    chosen = taps.choose_tap(dataset, "efficientnet_lite0", size, "imagenet", 1)
    seconds["tap choice"] = time.perf_counter() - started
    model = network.build_model(
        len(dataset.class_names),
        dataset.input_shape,
        backbone="efficientnet_lite0",
        backbone_weights="imagenet",
        backbone_size=size,
        backbone_tap=chosen.tap,
    )
    network.compile_model(model)
    mark = time.perf_counter()
    training.fit(model, dataset, params, None, 1, verbose=0)
    seconds["head"] = time.perf_counter() - mark
    mark = time.perf_counter()
    metrics, probabilities = training.evaluate(model, dataset.test)
    seconds["test"] = time.perf_counter() - mark
    mark = time.perf_counter()
    trusted = posthoc.fit(model, dataset, params, 1, probabilities)
    seconds["post-hoc"] = time.perf_counter() - mark
    return {
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "total_s": round(time.perf_counter() - started, 2),
        "backbone_images": computed[0],
        "train_images": len(dataset.train.labels),
        "test_images": len(dataset.test.labels),
        "tap": chosen.tap,
        "accuracy": round(float(metrics["accuracy"]), 4),
        "temperature": round(float(trusted.calibration["temperature"]), 4),
    }


def _child(data_dir: Path, size: int, memo: bool) -> dict:
    env = {**os.environ, "IMGCLF_FEATURE_MEMO": "1" if memo else "0"}
    return child("devkit.bench_head", "run", str(data_dir), str(size), env=env)


def table(record: dict) -> str:
    env, rounds = record["environment"], record["rounds"]
    first = rounds[0]["off"]
    lines = [
        f"`make bench-head`: the photo-like set ({first['train_images']} training and "
        f"{first['test_images']} test photos), EfficientNet-Lite0 at {record['size']} px, head "
        f"only, {len(rounds)} rounds (each run its own process); {env['device']}, "
        f"{env['cpu_cores']} cores; {record['date']}.",
        "",
        "| features | " + " | ".join(f"{p}, s" for p in PHASES) + " | total, s "
        "| images through the backbone | accuracy | temperature |",
        "|---|" + "---:|" * (len(PHASES) + 4),
    ]
    for key, label in (("off", "computed at every read"), ("on", "computed once (memo)")):
        runs = [r[key] for r in rounds]
        cells = [f"{statistics.median(r['seconds'][p] for r in runs):.1f}" for p in PHASES]
        total = statistics.median(r["total_s"] for r in runs)
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {total:.1f} | "
            f"{runs[0]['backbone_images']:,} | {runs[0]['accuracy']:.4f} | "
            f"{runs[0]['temperature']:.4f} |"
        )
    lines += [
        "",
        f"Speed-up of the whole path: {record['speedup']:.2f}x (median of the rounds' ratios: "
        + ", ".join(f"{r:.2f}" for r in record["ratios"])
        + ").",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":  # a child: one run, printed as JSON
        print(json.dumps(run(Path(argv[1]), int(argv[2]))))
        return 0
    from devkit import photoset

    rounds = int(os.environ.get("BENCH_HEAD_ROUNDS") or 2)
    size = int(os.environ.get("BENCH_HEAD_SIZE") or 224)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-head-") as folder:
        data_dir = photoset.write(Path(folder) / "photos")
        for index in range(rounds):
            found = {}
            order = (("off", False), ("on", True))
            for key, memo in order if index % 2 == 0 else order[::-1]:  # alternating
                print(f"round {index + 1}: features {key} ...", flush=True)
                found[key] = _child(data_dir, size, memo)
                print(json.dumps(found[key]), flush=True)
            results.append(found)
    ratios = [r["off"]["total_s"] / r["on"]["total_s"] for r in results]
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "size": size,
        "environment": _environment(),
        "rounds": results,
        "ratios": [round(r, 3) for r in ratios],
        "speedup": round(statistics.median(ratios), 3),
    }
    same = all(
        r["off"]["accuracy"] == r["on"]["accuracy"]
        and abs(r["off"]["temperature"] - r["on"]["temperature"]) < 1e-3
        for r in results
    )
    if not same:  # a memo that changes the model: no figures to publish
        print(json.dumps(record), file=sys.stderr)
        print("bench-head: the two runs gave different models", file=sys.stderr)
        return 1
    publish("bench-head", record, table(record), MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
