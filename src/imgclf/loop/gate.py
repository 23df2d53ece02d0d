"""The promotion gate: a candidate replaces the current model unless the evidence says it is
worse, every class it predicts was tested, and every class new to it is recognised.

Both models answer the same test images (``evidence.Paired``), so the gate compares them image
by image, not by two point estimates that differ by noise. The checks:

1. **Coverage.** Every class of the candidate has at least ``min_test_images`` test images. A
   class nobody tested is never served.
2. **Per class.** For every tested class the current model knows, an exact one-sided McNemar
   test on the images where the two models disagree asks whether the candidate's recall is
   lower. The class blocks only when the candidate is worse *with confidence* (the test is
   significant after correcting for the number of comparisons) *and* by more than
   ``max_recall_drop``, the practical margin.
3. **Overall.** The same for ``metric`` (macro F1 by default): a paired randomisation test
   (each image's two answers swapped at random) gives a one-sided p-value, a paired bootstrap
   stratified by class the 95 % interval of the difference; it blocks only when significant
   and worse by more than ``tolerance``. The overall test is one more
   member of the family the correction covers (Holm's step-down with Tarone's count of
   testable comparisons, ``evidence.step_down``): the chance of rejecting a candidate that is
   as good as the current model is at most ``alpha``, whatever the number of classes.
4. **New classes.** Every class the current model never saw (``unseen_classes``) reaches at
   least ``min_new_class_recall``. The current model scores zero there, so a comparison says
   nothing about it.
5. **Calibration and the unknown answer** (``imgclf.loop.trustcheck``), when both models
   have them: the candidate's ECE and its share of test images answered unknown must not be
   higher, nor its share of unlike images answered unknown lower, with confidence and by more
   than their margins; these comparisons are members of the same family.

A difference beyond the margin that the test set cannot confirm is "not enough evidence to
tell": it does not block (blocking on it would reject equally good candidates most of the time),
and the decision says how many more test images of which class would settle a drop that size.
With no current model only coverage applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from imgclf.config import GATE_RANGES, LoopSettings
from imgclf.config.catalogue import BY_NAME
from imgclf.loop import evidence, trustcheck
from imgclf.loop.comparison import OVERALL, Margins, Verdict, compare
from imgclf.model.evaluation import GATE_METRIC

GATE_METRICS = evidence.METRICS


@dataclass(frozen=True)
class GateThresholds:
    """What the gate demands of a candidate, passed whole. The defaults are the settings'
    (``GATE_*`` in ``config/variables.toml``); ``from_settings`` applies the ones set.

    Raises:
        ValueError: an unknown metric or a figure out of its range (``config.GATE_RANGES``).
    """

    metric: str = GATE_METRIC
    #: the overall metric blocks only if shown worse by more than this
    tolerance: float = 0.0
    min_test_images: int = BY_NAME["GATE_MIN_TEST_IMAGES"].default
    max_recall_drop: float = BY_NAME["GATE_MAX_RECALL_DROP"].default
    min_new_class_recall: float = BY_NAME["GATE_MIN_NEW_CLASS_RECALL"].default
    alpha: float = BY_NAME["GATE_ALPHA"].default

    def __post_init__(self):
        if self.metric not in GATE_METRICS:
            raise ValueError(f"metric={self.metric!r}: expected one of {', '.join(GATE_METRICS)}")
        for name, (low, high) in GATE_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}={value}: expected {low:g} to {high:g}")

    @classmethod
    def from_settings(cls, loop: LoopSettings, **given) -> GateThresholds:
        """The settings' thresholds, with those ``given`` (not None) instead: the one place a
        notebook's or a job's parameters meet the settings."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"not a gate threshold: {', '.join(unknown)}")
        values = {
            "min_test_images": loop.min_test_images,
            "max_recall_drop": loop.max_recall_drop,
            "min_new_class_recall": loop.min_new_class_recall,
            "alpha": loop.alpha,
        }
        values.update({name: value for name, value in given.items() if value is not None})
        return cls(**values)

    def numeric(self) -> dict:
        """The numeric thresholds (all but the metric), by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metric"}


@dataclass
class GateDecision:
    """The gate's verdict, with the evidence, for the report, the registry and the API.

    ``blocked`` names each class that stopped promotion and why; ``needs`` says how many more
    test images each untested class needs; ``inconclusive`` says, for each difference the test
    set could not confirm, what would settle it. ``comparisons`` has one row per class (test
    images, both recalls, the difference with its 95 % interval, the p-value, the level it was
    held to, the verdict, the smallest drop this many test images can detect) and ``overall``
    the same for ``metric``; ``trust`` the same for calibration and the unknown answer.
    """

    promote: bool
    metric: str
    candidate: float
    current: float | None
    tolerance: float
    reason: str
    #: the thresholds it was held to (``GateThresholds``)
    min_test_images: int
    max_recall_drop: float
    min_new_class_recall: float
    alpha: float
    blocked: dict[str, str] = field(default_factory=dict)
    needs: dict[str, int] = field(default_factory=dict)
    verdict: str = Verdict.NOT_WORSE.value
    inconclusive: dict[str, str] = field(default_factory=dict)
    comparisons: list[dict] = field(default_factory=list)
    overall: dict = field(default_factory=dict)
    detectable_drop: float | None = None
    trust: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def coverage(candidate_metrics: dict, min_test_images: int) -> dict[str, int]:
    """Classes with fewer than ``min_test_images`` test images: class -> images still needed."""
    per_class = candidate_metrics.get("per_class", {})
    return {
        name: min_test_images - int(scores["support"])
        for name, scores in per_class.items()
        if int(scores["support"]) < min_test_images
    }


def weak_new_classes(
    candidate_metrics: dict, current_metrics: dict, min_new_class_recall: float
) -> dict[str, float]:
    """Classes new to the current model, tested, whose recall is under ``min_new_class_recall``:
    class -> recall. Untested ones are left to the coverage check."""
    per_class = candidate_metrics.get("per_class", {})
    return {
        name: float(per_class[name]["recall"])
        for name in current_metrics.get("unseen_classes", [])
        if name in per_class
        and per_class[name].get("support")
        and float(per_class[name]["recall"]) < min_new_class_recall - 1e-12
    }


def _block_untested(decision: GateDecision, candidate_metrics: dict) -> str:
    """Check 1: fill ``needs`` and ``blocked`` for classes lacking test images; the reason."""
    least = decision.min_test_images
    decision.needs = coverage(candidate_metrics, least)
    for name, missing in decision.needs.items():
        decision.blocked[name] = (
            f"{least - missing} test image(s); at least {least} needed ({missing} more): "
            f"upload {missing} more image(s) of it; a class uploaded by mistake is removed "
            f"with DELETE /uploads/classes/{name}, and one the current model already predicts "
            "needs a model trained without it (make train)"
        )
    if not decision.needs:
        return ""
    listed = ", ".join(f"{name!r} needs {n} more" for name, n in decision.needs.items())
    return (
        f"not every class was tested: {listed} test image(s) (at least {least} per class; "
        "upload more images of these classes, or remove a class uploaded by mistake with "
        "DELETE /uploads/classes/<name>)"
    )


def _block_weak_new_classes(decision: GateDecision, candidate_metrics, current_metrics) -> str:
    """Check 4: block the new classes the candidate does not recognise well enough; the reason."""
    floor = decision.min_new_class_recall
    weak = weak_new_classes(candidate_metrics, current_metrics, floor)
    for name, recall in weak.items():
        decision.blocked[name] = (
            f"new class recognised with recall {recall:.4f} (at least {floor:g})"
        )
    if not weak:
        return ""
    listed = ", ".join(f"{name!r} ({recall:.4f})" for name, recall in weak.items())
    return (
        f"new class(es) not recognised well enough on their test images: {listed}, at least "
        f"{floor:g} recall needed (more training images of them help)"
    )


def _describe(row: dict, what: str) -> str:
    """``what`` of both models, the difference with its interval, the p-value and its level."""
    candidate = row.get("candidate_recall", row.get("candidate"))
    current = row.get("current_recall", row.get("current"))
    return (
        f"{what} {candidate:.4f} against {current:.4f} (difference {row['difference']:+.4f}, "
        f"95 % interval {row['ci_low']:+.4f} to {row['ci_high']:+.4f}; "
        f"p={row['p_value']:.2g}, level {row['level']:.2g})"
    )


def _worse_text(row: dict, floor: float) -> str:
    if row.get("too_small_to_test") and row["candidate_recall"] < floor:
        return (
            f"recall {row['candidate_recall']:.4f} against {row['current_recall']:.4f} on "
            f"only {row['n']} test images, too few for a paired test to show even the loss of "
            f"all of them; it fell under the {floor:g} every class needs (upload more test "
            "images of it)"
        )
    return _describe(row, "recall")


def _block_worse(decision: GateDecision) -> str:
    """Fill ``blocked`` for the comparisons that show the candidate worse; the reason."""
    worse = []
    for row in decision.comparisons:
        if row["verdict"] == Verdict.WORSE:
            text = _worse_text(row, decision.min_new_class_recall)
            decision.blocked[row["class"]] = text
            worse.append(f"{row['class']!r}: {text}")
    if decision.overall.get("verdict") == Verdict.WORSE:
        worse.append(_describe(decision.overall, decision.metric))
    for row in decision.trust:
        if row["verdict"] == Verdict.WORSE:
            worse.append(f"{row['check']}: {_describe(row, row['what'])}")
    if not worse:
        return ""
    return "the candidate is worse with confidence, by more than the margin: " + "; ".join(worse)


def _note_inconclusive(decision: GateDecision) -> str:
    """Fill ``inconclusive`` with what would settle each unconfirmed difference; a sentence."""
    for row in decision.comparisons:
        if row["verdict"] != Verdict.NOT_ENOUGH_EVIDENCE:
            continue
        more = row.get("more_images")
        settle = (
            f"about {more} more test images of {row['class']!r} would settle a drop this size "
            f"(80 % power at level {row['planning_level']:.2g}, alpha over every comparison)"
            if more
            else f"more test images of {row['class']!r} would settle it"
        )
        decision.inconclusive[row["class"]] = f"{_describe(row, 'recall')}: {settle}"
    if decision.overall.get("verdict") == Verdict.NOT_ENOUGH_EVIDENCE:
        decision.inconclusive[OVERALL] = _describe(decision.overall, decision.metric)
    for row in decision.trust:
        if row["verdict"] == Verdict.NOT_ENOUGH_EVIDENCE:
            decision.inconclusive[row["check"]] = _describe(row, row["what"])
    if not decision.inconclusive:
        return ""
    return (
        "not enough evidence to tell for "
        + ", ".join(repr(name) for name in decision.inconclusive)
        + " (a difference beyond the margin that this test set cannot confirm)"
    )


def gate(
    candidate_metrics: dict,
    current_metrics: dict | None,
    paired: evidence.Paired | None = None,
    thresholds: GateThresholds = GateThresholds(),  # noqa: B008 (frozen: safe to share)
    resamples: int = evidence.RESAMPLES,
    plan: bool = True,
    trust: tuple | None = None,
) -> GateDecision:
    """Decide whether a candidate may be promoted over the current model (see the module).

    Args:
        candidate_metrics, current_metrics: ``evaluation.classification_metrics`` of both on
            the same test set (current None: no comparable current model).
        paired: both models' answers on that test set; required with ``current_metrics``.
        thresholds: what the candidate must meet (default: the settings' defaults).
        plan: work out the detectable drops and the test images that would settle open
            questions (``make bench-gate`` leaves it out: it changes no decision).
        trust: ``(candidate, current)`` ``trustcheck.Answers``, to compare calibration and the
            unknown answer too (None: not compared).

    Raises:
        ValueError: a metric missing from a dict, or a current model without paired answers.
    """
    metric, numeric = thresholds.metric, thresholds.numeric()
    current = float(current_metrics[metric]) if current_metrics is not None else None
    candidate = float(candidate_metrics[metric])
    decision = GateDecision(True, metric, candidate, current, reason="", **numeric)
    untested = _block_untested(decision, candidate_metrics)
    if current_metrics is None:
        decision.promote = not untested
        decision.verdict = (Verdict.BLOCKED if untested else Verdict.FIRST).value
        decision.reason = untested or "no current model: the candidate becomes the first"
        return decision
    if paired is None:
        raise ValueError("the gate needs both models' answers on the test set (paired)")
    _check_pairing(candidate_metrics, current_metrics, paired, metric)
    margins = Margins(
        thresholds.tolerance, thresholds.max_recall_drop, thresholds.min_new_class_recall
    )
    if trust is not None:
        decision.trust = trustcheck.rows(*trust, thresholds.max_recall_drop, resamples)
    decision.comparisons, decision.overall = compare(
        paired, current_metrics, metric, margins, thresholds.alpha, resamples, plan, decision.trust
    )
    drops = [row["detectable_drop"] for row in decision.comparisons if "detectable_drop" in row]
    if plan and drops:
        decision.detectable_drop = None if None in drops else max(drops)
    return _conclude(decision, candidate_metrics, current_metrics, untested)


def _check_pairing(candidate_metrics: dict, current_metrics: dict, paired, metric: str) -> None:
    """Refuse answers and metrics that cannot be of the same test set, and figures not numbers.

    Raises:
        ValueError: naming what disagrees.
    """
    for name, metrics in (("candidate", candidate_metrics), ("current", current_metrics)):
        if not np.isfinite(float(metrics[metric])):
            raise ValueError(f"the {name}'s {metric} is {metrics[metric]}: not a number")
    per_class = candidate_metrics.get("per_class")
    if per_class is None:
        return
    if list(per_class) != list(paired.class_names):
        raise ValueError(
            f"the candidate's classes {list(per_class)} are not the paired answers' classes "
            f"{list(paired.class_names)}"
        )
    support = paired.support().tolist()
    if [int(scores["support"]) for scores in per_class.values()] != support:
        raise ValueError("the paired answers are not of the test set the metrics were")


def _conclude(decision: GateDecision, candidate_metrics, current_metrics, untested: str):
    worse = _block_worse(decision)
    weak = _block_weak_new_classes(decision, candidate_metrics, current_metrics)
    open_questions = _note_inconclusive(decision)
    reasons = [r for r in (untested, worse, weak) if r]
    if reasons:
        decision.promote = False
        decision.verdict = (Verdict.WORSE if worse else Verdict.BLOCKED).value
        decision.reason = "; ".join(reasons) + "; the current model stays"
        return decision
    overall = decision.overall
    decision.verdict = (Verdict.NOT_ENOUGH_EVIDENCE if open_questions else Verdict.NOT_WORSE).value
    new = current_metrics.get("unseen_classes")
    decision.reason = (
        f"candidate {decision.metric} {overall['candidate']:.4f} against current "
        f"{overall['current']:.4f} (difference {overall['difference']:+.4f}, 95 % interval "
        f"{overall['ci_low']:+.4f} to {overall['ci_high']:+.4f}); no class shown worse by more "
        f"than {decision.max_recall_drop:g} recall (family-wise level {decision.alpha:g})"
        + (
            f"; new classes recognised (recall at least {decision.min_new_class_recall:g})"
            if new
            else ""
        )
        + (f"; {open_questions}" if open_questions else "")
    )
    return decision


def min_detectable(decision: GateDecision) -> str:
    """A sentence: the smallest recall drop the test set can detect, and in which class."""
    rows = [row for row in decision.comparisons if "detectable_drop" in row]
    if not rows:
        return ""
    sizes = np.array([row["n"] for row in rows])
    typical = rows[int(np.argsort(sizes)[len(sizes) // 2])]
    weakest = min(rows, key=lambda row: (row["n"], -(row["detectable_drop"] or 2)))
    worst = weakest["detectable_drop"]
    sentence = (
        f"With {typical['n']} test images (the median class), a recall drop of "
        f"{typical['detectable_drop'] or 'more than the recall'} is caught 80 % of the time"
    )
    if weakest["n"] < typical["n"]:
        sentence += (
            f"; the least-tested comparable class, {weakest['class']!r} ({weakest['n']} "
            f"images), needs a drop of {worst if worst is not None else 'more than its recall'}"
        )
    return sentence + ". Add test images to see smaller drops."
