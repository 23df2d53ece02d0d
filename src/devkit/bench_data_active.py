"""Active-learning rows of ``make bench-data``: accuracy against labels used, the review queue
(``imgclf.loop.review.useful_order``: smallest margin, then k-centre greedy on the features)
against random picks.

Each data set's training pool (``bench_data_features``) is the unlabelled set; ``START`` images
picked at random are labelled first (the same for both ways, per seed). Each round refits the
product's linear classifier (``labelcheck._classifier``: logistic regression on standardised
features) on the labelled images, scores it on the test images, and asks for the next labels
up to the next of ``BUDGETS``: the queue's first picks (its probabilities: that classifier's on
the unlabelled images; ``known``: the labelled images' features) or as many at random. Seeds
``SEEDS`` (a start of a single class is drawn again). "Labels saved": how many fewer labels
the queue needs to reach, in mean over the seeds, the accuracy random picks reach with the
last budget.
"""

from __future__ import annotations

import numpy as np

from devkit.bench_data_features import Bench
from imgclf.loop import labelcheck, review

START = 20
BUDGETS = (20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500)
SEEDS = (1, 2, 3)
WAYS = ("useful_order", "random")


def curve(bench: Bench, way: str, seed: int) -> list[float]:
    """Test accuracy at every budget for one way of picking and one seed."""
    pool, labels = bench.features["pool"], bench.pool_y
    test, truth = bench.features["test"], bench.test_y
    rng = np.random.default_rng([seed, 0])
    labelled = list(rng.choice(len(pool), START, replace=False))
    while len(set(labels[labelled])) < 2:  # a classifier needs two classes to start
        labelled = list(rng.choice(len(pool), START, replace=False))
    picker = np.random.default_rng([seed, 1])
    found = []
    for step, budget in enumerate(BUDGETS):
        fitted = labelcheck._classifier().fit(pool[labelled], labels[labelled])
        found.append(round(float(np.mean(fitted.predict(test) == truth)), 4))
        if step + 1 == len(BUDGETS):
            break
        wanted = BUDGETS[step + 1] - budget
        unlabelled = np.setdiff1d(np.arange(len(pool)), labelled)
        if way == "random":
            picks = picker.choice(unlabelled, wanted, replace=False)
        else:
            probabilities = fitted.predict_proba(pool[unlabelled])
            order = review.useful_order(
                probabilities, pool[unlabelled], wanted, known=pool[labelled]
            )
            picks = unlabelled[order]
        labelled.extend(int(i) for i in picks)
    return found


def labels_to_reach(means: list[float], target: float) -> int | None:
    """The first budget whose mean accuracy reaches ``target`` (None: none does)."""
    for budget, accuracy in zip(BUDGETS, means, strict=True):
        if accuracy >= target:
            return budget
    return None


def measure(benches: dict[str, Bench]) -> dict:
    rows = []
    for bench in benches.values():
        curves = {way: [curve(bench, way, seed) for seed in SEEDS] for way in WAYS}
        means = {way: np.mean(curves[way], axis=0).round(4).tolist() for way in WAYS}
        target = means["random"][-1]
        needed = labels_to_reach(means["useful_order"], target)
        rows.append(
            {
                "dataset": bench.name,
                "pool": len(bench.pool_y),
                "test_images": len(bench.test_y),
                "budgets": list(BUDGETS),
                "curves": curves,
                "mean": means,
                "random_at_last": target,
                "queue_needs": needed,
                "labels_saved": BUDGETS[-1] - needed if needed is not None else 0,
            }
        )
    return {"start": START, "seeds": list(SEEDS), "rows": rows}


def table(report: dict) -> str:
    budgets = report["rows"][0]["budgets"] if report["rows"] else list(BUDGETS)
    lines = [
        "| data set | picks | " + " | ".join(str(b) for b in budgets) + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    for row in report["rows"]:
        for way in WAYS:
            spread = np.std(row["curves"][way], axis=0)
            cells = [f"{m:.3f} ±{s:.3f}" for m, s in zip(row["mean"][way], spread, strict=True)]
            lines.append(f"| {row['dataset']} | {way} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Mean test accuracy (± standard deviation over seeds "
        + ", ".join(map(str, report["seeds"]))
        + ") by labels used. Labels saved to reach random's accuracy at "
        f"{budgets[-1]}: "
        + "; ".join(
            f"{row['dataset']} {row['labels_saved']} (the queue needs "
            f"{row['queue_needs'] or 'more than ' + str(budgets[-1])})"
            for row in report["rows"]
        )
        + "."
    )
    return "\n".join(lines)
