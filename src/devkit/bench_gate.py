"""``make bench-gate``: how often the promotion gate errs, simulated with the gate's own code.

For each number of classes and of test images a class, pairs of models are simulated on one
test set and judged by ``imgclf.loop.gate.gate`` with its defaults (family-wise alpha 0.05, a 0.05
recall margin, tolerance 0): how often an equally good candidate is promoted, and how often a
candidate worse in one class (by 10 or 20 recall points, or with that class's recall halved) is
blocked. The models have recall ``BENCH_GATE_RECALL`` (0.9) in every class; a wrong answer
names one of the next two classes. Two error models: independent errors (the worst case for a
paired test) and errors shared on a share ``BENCH_GATE_SHARED`` (0.6) of the images, as
between retrains of one model (docs/learning-loop.md says what was measured between real ones).

Writes ``reports/bench-gate-<time>.json`` and the table in docs/benchmarks.md (between the
``bench-gate`` markers). Settings: ``BENCH_GATE_RUNS`` (300 pairs a cell),
``BENCH_GATE_RECALL`` (0.9), ``BENCH_GATE_RESAMPLES`` (bootstrap resamples, 500; the gate's
default is 2,000: fewer makes the overall test's smallest p-value 1/501, which changes no
per-class decision and few overall ones).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from datetime import UTC, datetime

import numpy as np

from devkit.bench_train import publish
from imgclf.loop import evidence, gate
from imgclf.model import evaluation

MARKERS = ("<!-- bench-gate -->", "<!-- /bench-gate -->")
CLASSES = (3, 10, 30, 100)
IMAGES = (10, 20, 40, 100, 200)
SCENARIOS = {"equal": 0.0, "10 points": 0.10, "20 points": 0.20, "halved": None}


def simulate(rng, classes: int, n: int, recall: float, drop: float = 0.0, shared: float = 0.0):
    """One pair of models on ``classes`` x ``n`` test images; returns the gate's three inputs.

    Both have ``recall`` in every class. On a share ``shared`` of the images the candidate is
    right exactly when the current model is (retrains of one model share most of their
    errors); elsewhere the two err independently. Then the candidate's class 0 is harmed: each
    of its right answers there turns wrong with chance ``drop / recall``, so its recall falls
    by ``drop``. A wrong answer names one of the two next classes.
    """
    labels = np.repeat(np.arange(classes), n)
    right_current = rng.random(len(labels)) < recall
    copied = rng.random(len(labels)) < shared
    right_candidate = np.where(copied, right_current, rng.random(len(labels)) < recall)
    harmed = (labels == 0) & (rng.random(len(labels)) < drop / recall)
    right_candidate &= ~harmed
    other = (labels + rng.integers(1, 3, len(labels))) % classes
    names = [f"c{i}" for i in range(classes)]
    paired = evidence.Paired(
        labels,
        np.where(right_candidate, labels, other),
        np.where(right_current, labels, other),
        names,
    )
    eye = np.eye(classes)
    return (
        evaluation.classification_metrics(labels, eye[paired.candidate], names),
        evaluation.classification_metrics(labels, eye[paired.current], names),
        paired,
    )


def cell(
    classes: int, n: int, recall: float, shared: float, runs: int, resamples: int, seed: int
) -> dict:
    """Share promoted (equal) or blocked (worse) per scenario, for one size of test set."""
    rng = np.random.default_rng(seed)
    result = {"classes": classes, "images_per_class": n, "shared": shared}
    for name, drop in SCENARIOS.items():
        drop = recall / 2 if drop is None else drop
        promoted = sum(
            gate.gate(
                *simulate(rng, classes, n, recall, drop, shared), resamples=resamples, plan=False
            ).promote
            for _ in range(runs)
        )
        result[name] = (promoted if name == "equal" else runs - promoted) / runs
    level = evidence.ALPHA / (classes + 1)
    result["detectable_drop"] = evidence.detectable_drop(n, recall, level, 0.05)
    return result


def _cell(arguments: tuple) -> dict:
    return cell(*arguments)


def targets(cells: list[dict]) -> dict[str, bool]:
    """The issue's targets, each met or not."""

    def every(rows, key, least):
        return all(row[key] >= least for row in rows)

    sized = {size: [c for c in cells if c["images_per_class"] >= size] for size in (40, 100, 200)}
    return {
        "equal candidates promoted >= 95 % at every size": every(cells, "equal", 0.95),
        "halved class blocked >= 95 % with >= 40 images": every(sized[40], "halved", 0.95),
        "20-point drop blocked >= 80 % with >= 100 images": every(sized[100], "20 points", 0.8),
        "10-point drop blocked >= 80 % with >= 200 images": every(sized[200], "10 points", 0.8),
    }


def table(record: dict) -> str:
    lines = [
        f"`make bench-gate`: {record['runs']} simulated pairs of models a cell, recall "
        f"{record['recall']} in every class, the gate's defaults (alpha {record['alpha']}, "
        f"margin {record['margin']}, tolerance 0); {record['date']}, {record['seconds']:.0f} s.",
    ]
    for model in record["models"]:
        lines += [
            "",
            f"Errors {model['name']}:",
            "",
            "| classes | test images a class | equal: promoted | one class -10 points: "
            "blocked | -20 points: blocked | halved: blocked | drop caught 80 % of the time |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in model["cells"]:
            shares = " | ".join(f"{c[name] * 100:.1f} %" for name in SCENARIOS)
            drop = c["detectable_drop"]
            lines.append(
                f"| {c['classes']} | {c['images_per_class']} | {shares} "
                f"| {drop if drop is not None else 'none'} |"
            )
        lines.append("")
        lines += [
            f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in model["targets"].items()
        ]
        pooled = [c["equal"] for c in model["cells"]]
        lines.append(
            f"- equal candidates promoted over all sizes: {100 * np.mean(pooled):.1f} % of "
            f"{len(pooled) * record['runs']:,} (a cell of {record['runs']} pairs varies by about "
            f"{100 * 2 * np.sqrt(0.05 * 0.95 / record['runs']):.1f} points by chance alone)"
        )
    return "\n".join(lines)


#: The error models: independent errors (the worst case for a paired test), and the share of
#: images two retrains of one model answer alike beyond chance (``BENCH_GATE_SHARED``; see
#: docs/learning-loop.md for the share measured between real retrains of the default model).
def error_models() -> dict[str, float]:
    shared = float(os.environ.get("BENCH_GATE_SHARED") or 0.6)
    return {
        "independent (the worst case)": 0.0,
        f"shared on {shared:.0%} of the images (as retrains of one model)": shared,
    }


def main(argv: list[str] | None = None) -> int:
    runs = int(os.environ.get("BENCH_GATE_RUNS") or 300)
    recall = float(os.environ.get("BENCH_GATE_RECALL") or 0.9)
    resamples = int(os.environ.get("BENCH_GATE_RESAMPLES") or 500)
    started = time.monotonic()
    grid = [(c, n) for c in CLASSES for n in IMAGES]
    models = []
    with multiprocessing.Pool(os.cpu_count()) as pool:  # one cell a process, seeded by index
        for name, shared in error_models().items():
            sizes = [(c, n, recall, shared, runs, resamples, i) for i, (c, n) in enumerate(grid)]
            cells = []
            for result in pool.imap(_cell, sizes):
                cells.append(result)
                print(json.dumps(result), flush=True)
            models.append(
                {"name": name, "shared": shared, "cells": cells, "targets": targets(cells)}
            )
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "runs": runs,
        "recall": recall,
        "resamples": resamples,
        "alpha": evidence.ALPHA,
        "margin": 0.05,
        "models": models,
        "seconds": time.monotonic() - started,
    }
    publish("bench-gate", record, table(record), MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
