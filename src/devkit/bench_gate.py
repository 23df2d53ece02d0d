"""``make bench-gate``: how often the promotion gate errs, simulated with the gate's own code.

For each number of classes and of test images a class, pairs of models are simulated on one
test set and judged by ``imgclf.gate.gate`` with its defaults (family-wise alpha 0.05, a 0.05
recall margin, tolerance 0): how often an equally good candidate is promoted, and how often a
candidate worse in one class (by 10 or 20 recall points, or with that class's recall halved) is
blocked. Both models err independently of each other (the worst case for a paired test: real
retrains share most of their errors, which makes it stronger), with recall ``BENCH_GATE_RECALL``
(0.9) in every class; a wrong answer names another class.

Writes ``reports/bench-gate-<time>.json`` and the table in README.md (between the
``bench-gate`` markers). Settings: ``BENCH_GATE_RUNS`` (200 pairs a cell),
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

from devkit.bench_train import update_readme
from imgclf import evaluation, evidence, gate
from imgclf.config import get_settings
from imgclf.files import write_json_atomic

README_MARKERS = ("<!-- bench-gate -->", "<!-- /bench-gate -->")
CLASSES = (3, 10, 30, 100)
IMAGES = (10, 20, 40, 100, 200)
SCENARIOS = {"equal": 0.0, "10 points": 0.10, "20 points": 0.20, "halved": None}


def simulate(rng, classes: int, n: int, recall: float, drop: float = 0.0) -> tuple:
    """One pair of models on ``classes`` x ``n`` test images, independent errors, the
    candidate's class 0 worse by ``drop``; returns the gate's three inputs."""
    labels = np.repeat(np.arange(classes), n)
    right_current = rng.random(len(labels)) < recall
    candidate_recall = np.where(labels == 0, recall - drop, recall)
    right_candidate = rng.random(len(labels)) < candidate_recall
    other = (labels + rng.integers(1, classes, len(labels))) % classes
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


def cell(classes: int, n: int, recall: float, runs: int, resamples: int, seed: int) -> dict:
    """Share promoted (equal) or blocked (worse) per scenario, for one size of test set."""
    rng = np.random.default_rng(seed)
    result = {"classes": classes, "images_per_class": n}
    for name, drop in SCENARIOS.items():
        drop = recall / 2 if drop is None else drop
        promoted = sum(
            gate.gate(
                *simulate(rng, classes, n, recall, drop), resamples=resamples, plan=False
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
        f"`make bench-gate`: {record['runs']} simulated pairs a cell, recall {record['recall']} "
        f"in every class, independent errors, the gate's defaults; {record['date']}, "
        f"{record['seconds']:.0f} s.",
        "",
        "| classes | test images a class | equal: promoted | one class -10 points: blocked "
        "| -20 points: blocked | halved: blocked | drop caught 80 % of the time |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in record["cells"]:
        shares = " | ".join(f"{c[name] * 100:.1f} %" for name in SCENARIOS)
        drop = c["detectable_drop"]
        lines.append(
            f"| {c['classes']} | {c['images_per_class']} | {shares} "
            f"| {drop if drop is not None else 'none'} |"
        )
    lines.append("")
    lines += [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in record["targets"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    runs = int(os.environ.get("BENCH_GATE_RUNS") or 200)
    recall = float(os.environ.get("BENCH_GATE_RECALL") or 0.9)
    resamples = int(os.environ.get("BENCH_GATE_RESAMPLES") or 500)
    started = time.monotonic()
    sizes = [(c, n, recall, runs, resamples, index) for index, (c, n) in enumerate(
        (c, n) for c in CLASSES for n in IMAGES
    )]  # fmt: skip
    cells = []
    with multiprocessing.Pool(os.cpu_count()) as pool:  # one cell a process, seeded by index
        for result in pool.imap(_cell, sizes):
            cells.append(result)
            print(json.dumps(result), flush=True)
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "runs": runs,
        "recall": recall,
        "resamples": resamples,
        "alpha": evidence.ALPHA,
        "margin": 0.05,
        "cells": cells,
        "targets": targets(cells),
        "seconds": time.monotonic() - started,
    }
    settings = get_settings()
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = write_json_atomic(settings.reports_dir / f"bench-gate-{stamp}.json", record)
    text = table(record)
    print(text)
    updated = update_readme(text, README_MARKERS)
    print(f"wrote {path}" + ("; README.md updated" if updated else ""))
    return 0 if all(record["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
