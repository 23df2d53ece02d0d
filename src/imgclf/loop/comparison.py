"""The gate's comparisons of a candidate with the current model on the same test images: one
row per class the current model knows (an exact McNemar test) and one for the overall metric
(a paired randomisation test), and the checks of calibration and the unknown answer
(``trustcheck.rows``) when both models have them, corrected together (``evidence.step_down``),
each judged against its margin. ``imgclf.loop.gate`` turns them into a decision and its reasons."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from imgclf.loop import evidence

OVERALL = "overall"


class Verdict(StrEnum):
    """What the gate concluded, for the whole candidate and for each comparison."""

    FIRST = "first"  # no comparable current model
    NOT_WORSE = "not-worse"  # no comparison shows the candidate worse beyond its margin
    NOT_ENOUGH_EVIDENCE = "not-enough-evidence"  # a difference beyond the margin, unconfirmed
    WORSE = "worse"  # worse with confidence and by more than the margin: blocks
    BLOCKED = "blocked"  # a class untested, or a new class not recognised


def _class_rows(paired: evidence.Paired, compared: list[str]) -> dict:
    """One row per compared class: n, both recalls, the difference and its interval, p."""
    only_current, only_candidate, p_values = evidence.discordant_counts(paired)
    k = len(paired.class_names)
    support = np.bincount(paired.labels, minlength=k)
    right_cand = np.bincount(paired.labels[paired.candidate == paired.labels], minlength=k)
    right_cur = np.bincount(paired.labels[paired.current == paired.labels], minlength=k)
    rows = {}
    for name in compared:
        i = paired.class_names.index(name)
        b, w, n = int(only_current[i]), int(only_candidate[i]), int(support[i])
        low, high = evidence.paired_interval(w, b, n)
        rows[name] = {
            "class": name,
            "n": n,
            "current_recall": float(right_cur[i] / n),
            "candidate_recall": float(right_cand[i] / n),
            "difference": float((right_cand[i] - right_cur[i]) / n),
            "ci_low": low,
            "ci_high": high,
            "only_current_right": b,
            "only_candidate_right": w,
            "p_value": float(p_values[i]),
            "p_min": evidence.smallest_p(b + w),
            "current_right": int(right_cur[i]),
        }
    return rows


def _judge(row: dict, rejected: bool, margin: float) -> str:
    drop = row["harm"] if "harm" in row else -row["difference"]
    if drop > margin + 1e-12:
        return Verdict.WORSE if rejected else Verdict.NOT_ENOUGH_EVIDENCE
    return Verdict.NOT_WORSE


def _too_small(row: dict, level: float, floor: float) -> bool:
    """A class so small that even losing every image the current model gets right could not
    be significant, whose recall fell from at least ``floor`` to under it: it blocks (as a new
    class under the floor does); a paired test could never protect it."""
    row["too_small_to_test"] = evidence.smallest_p(row["current_right"]) > level
    return (
        row["too_small_to_test"]
        and row["current_recall"] >= floor
        and row["candidate_recall"] < floor - 1e-12
    )


def _plan(row: dict, level: float, margin: float) -> None:
    """Add what this class's test images can detect, and what would settle an open question."""
    recall = row["current_recall"]
    row["planning_level"] = level
    row["detectable_drop"] = evidence.detectable_drop(row["n"], recall, level, margin)
    if row["verdict"] == Verdict.NOT_ENOUGH_EVIDENCE:
        needed = evidence.images_needed(recall, -row["difference"], level, margin)
        row["more_images"] = None if needed is None else max(needed - row["n"], 1)


@dataclass(frozen=True)
class Margins:
    """What a comparison may lose before it counts: overall, per class, and the floor a small
    class must stay above."""

    tolerance: float
    max_recall_drop: float
    floor: float


def compare(
    paired: evidence.Paired,
    current_metrics: dict,
    metric: str,
    margins: Margins,
    alpha: float,
    resamples: int = evidence.RESAMPLES,
    plan: bool = True,
    trust: list[dict] = (),
) -> tuple[list[dict], dict]:
    """Checks 2 and 3: every class the current model knows, and the overall metric; with
    ``trust`` (``trustcheck.rows``) also calibration and the unknown answer, in one family.

    Returns:
        ``(rows, overall)``: a row per compared class and one for the metric, each with its
        verdict (``Verdict``) and the level its p-value was held to.
    """
    boot = evidence.bootstrap(paired, metric, resamples)
    unseen = set(current_metrics.get("unseen_classes", []))
    support = paired.support()
    compared = [n for i, n in enumerate(paired.class_names) if support[i] and n not in unseen]
    rows = _class_rows(paired, compared)
    low, high = boot.interval(boot.difference)
    overall = {
        "metric": metric,
        "candidate": boot.candidate,
        "current": boot.current,
        "difference": boot.candidate - boot.current,
        "ci_low": low,
        "ci_high": high,
        "p_value": evidence.permutation_worse(paired, metric, resamples),
        "p_min": 1 / (resamples + 1),
    }
    everything = {
        **{f"class:{n}": r for n, r in rows.items()},
        OVERALL: overall,
        **{f"trust:{r['check']}": r for r in trust},
    }
    rejected, levels = evidence.step_down(
        {k: r["p_value"] for k, r in everything.items()},
        {k: r["p_min"] for k, r in everything.items()},
        alpha,
    )
    planning_level = alpha / len(everything)  # the strictest step: sizes planned for it
    for key, row in everything.items():
        row["level"] = levels[key]
        margin = margins.tolerance if key == OVERALL else margins.max_recall_drop
        row["verdict"] = _judge(row, key in rejected, row.get("margin", margin)).value
        if not key.startswith("class:"):
            continue
        if _too_small(row, planning_level, margins.floor):
            row["verdict"] = Verdict.WORSE.value
        if plan:
            _plan(row, planning_level, margin)
    return list(rows.values()), overall
