"""Drift rows of ``make bench-data``: false alarms and power of the test on model features.

``imgclf.loop.featuredrift.two_sample`` (a classifier two-sample test) compares a reference, the
features of up to 2,000 test images (``bench_data_features``), with production windows of 100,
1,000 and 5,000 images (a size is left out where the data set has too few images: the digits
have 1,437 training images). Drift is called as the product calls it
(``featuredrift.judged``): p-value under ``THRESHOLD`` (``DRIFT_P_VALUE`` 0.01 over the 7
tests of ``loop.drift``) and AUC at ``featuredrift.AUC_FLOOR`` at least. Windows:

- **in distribution**: training images (never in the reference; the backbone never trained on
  any of them): the share called drift is the false-alarm rate (goal <= 5 %);
- **brightness -30 %**: the same draw from the darkened pool;
- **class x3**: class index 0 three times as frequent as each other class;
- **10 % other data set**: a tenth of the window from the other data set.

Every window and split is seeded. The share called drift is also given at other AUC floors and
with the p-value alone, from the same tests, to show what the floor costs and prevents.
"""

from __future__ import annotations

import os

import numpy as np

from devkit.bench_data_features import SHIFT_CLASS, Bench
from imgclf.loop import featuredrift

SIZES = (100, 1000, 5000)
TESTS = 7
THRESHOLD = 0.01 / TESTS
NULL_REPEATS = int(os.environ.get("BENCH_DATA_NULL_REPEATS") or 40)
SHIFT_REPEATS = int(os.environ.get("BENCH_DATA_SHIFT_REPEATS") or 20)
CONDITIONS = ("in distribution", "brightness -30 %", "class x3", "10 % other data set")
FLOORS = (0.5, 0.55, 0.6, 0.65, 0.7)
MAX_FALSE_ALARMS = 0.05
SEED = 1


def window(bench: Bench, condition: str, size: int, rng) -> np.ndarray | None:
    """The features of one production window (None: the data set has too few images)."""
    pool, labels = bench.features["pool"], bench.pool_y
    if condition in ("in distribution", "brightness -30 %"):
        if size > len(pool):
            return None
        source = pool if condition == "in distribution" else bench.features["dark"]
        return source[rng.choice(len(pool), size, replace=False)]
    if condition == "class x3":
        classes = len(bench.classes)
        favoured = round(3 * size / (classes + 2))
        ones = np.concatenate([pool[labels == SHIFT_CLASS], bench.features["extra"]])
        others = pool[labels != SHIFT_CLASS]
        if favoured > len(ones) or size - favoured > len(others):
            return None
        chosen = [
            ones[rng.choice(len(ones), favoured, replace=False)],
            others[rng.choice(len(others), size - favoured, replace=False)],
        ]
        return np.concatenate(chosen)
    foreign = bench.features["foreign"]
    strangers = round(0.1 * size)
    if strangers > len(foreign) or size - strangers > len(pool):
        return None
    chosen = [
        foreign[rng.choice(len(foreign), strangers, replace=False)],
        pool[rng.choice(len(pool), size - strangers, replace=False)],
    ]
    return np.concatenate(chosen)


def runs(bench: Bench, condition: str, size: int) -> list[dict] | None:
    """``two_sample`` of every repeat of one (condition, size): AUC and p-value each."""
    repeats = NULL_REPEATS if condition == "in distribution" else SHIFT_REPEATS
    reference = bench.features["test"]
    found = []
    for repeat in range(repeats):
        rng = np.random.default_rng([SEED, CONDITIONS.index(condition), size, repeat])
        production = window(bench, condition, size, rng)
        if production is None:
            return None
        test = featuredrift.two_sample(reference, production, seed=repeat)
        judged = featuredrift.judged(test, THRESHOLD)
        found.append({"auc": test["auc"], "p_value": test["p_value"], "drift": judged["drift"]})
    return found


def called(tests: list[dict], floor: float | None) -> float:
    """The share of ``tests`` called drift at ``floor`` (None: the p-value alone)."""
    hits = [t["p_value"] < THRESHOLD and (floor is None or t["auc"] >= floor) for t in tests]
    return round(float(np.mean(hits)), 3)


def measure(benches: dict[str, Bench]) -> dict:
    rows = []
    for bench in benches.values():
        for condition in CONDITIONS:
            for size in SIZES:
                tests = runs(bench, condition, size)
                row = {"dataset": bench.name, "condition": condition, "size": size}
                if tests is None:
                    rows.append({**row, "repeats": 0})
                    continue
                rows.append(
                    {
                        **row,
                        "repeats": len(tests),
                        "reference": len(bench.features["test"]),
                        "called": round(float(np.mean([t["drift"] for t in tests])), 3),
                        "p_only": called(tests, None),
                        "by_floor": {str(f): called(tests, f) for f in FLOORS},
                        "median_auc": round(float(np.median([t["auc"] for t in tests])), 3),
                    }
                )
    return {
        "threshold": THRESHOLD,
        "auc_floor": featuredrift.AUC_FLOOR,
        "rows": rows,
        "floors": floor_summary(rows),
    }


def floor_summary(rows: list[dict]) -> dict:
    """Per AUC floor: the worst false-alarm rate over data sets and sizes, the mean power over
    the shifts, and whether it keeps false alarms at or under ``MAX_FALSE_ALARMS``; ``best``:
    the floor with the most power among those that do (the lowest on a tie)."""
    measured = [row for row in rows if row["repeats"]]
    summary = {}
    for floor in (*map(str, FLOORS), "p only"):

        def rate(row, floor=floor):
            return row["p_only"] if floor == "p only" else row["by_floor"][floor]

        null = [rate(r) for r in measured if r["condition"] == "in distribution"]
        power = [rate(r) for r in measured if r["condition"] != "in distribution"]
        summary[floor] = {
            "worst_false_alarms": max(null),
            "mean_power": round(float(np.mean(power)), 3),
            "safe": max(null) <= MAX_FALSE_ALARMS,
        }
    safe = [f for f in map(str, FLOORS) if summary[f]["safe"]]
    best = max(safe, key=lambda f: (summary[f]["mean_power"], -float(f))) if safe else None
    return {"by_floor": summary, "best": best}


def table(report: dict) -> str:
    floors = [str(f) for f in FLOORS]
    lines = [
        "| data set | windows | size | repeats | median AUC | called drift (floor "
        f"{report['auc_floor']}) | p-value only | "
        + " | ".join(f"floor {f}" for f in floors)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(floors),
    ]
    for row in report["rows"]:
        head = f"| {row['dataset']} | {row['condition']} | {row['size']:,} |"
        if not row["repeats"]:
            lines.append(head + " too few images |" + " |" * (3 + len(floors)))
            continue
        cells = [row["by_floor"][f] for f in floors]
        lines.append(
            f"{head} {row['repeats']} | {row['median_auc']:.3f} | **{row['called']:.2f}** | "
            f"{row['p_only']:.2f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |"
        )
    summary = report["floors"]["by_floor"]
    lines.append("")
    lines.append(
        "Worst false-alarm rate over the in-distribution rows / mean power over the shifted "
        "rows: "
        + "; ".join(
            f"{f}: {s['worst_false_alarms']:.2f} / {s['mean_power']:.2f}"
            for f, s in summary.items()
        )
        + f". Best floor (false alarms <= {MAX_FALSE_ALARMS:.0%} everywhere, most power): "
        f"{report['floors']['best']}."
    )
    return "\n".join(lines)
