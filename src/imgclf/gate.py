"""The promotion gate: a candidate replaces the current model only if every class it predicts
was tested, it is not worse overall, no class lost more than a set amount of recall, and every
class new to it is recognised.

The four checks, in order:

1. **Coverage.** Every class of the candidate has at least ``min_test_images`` images in the
   test set. A class nobody tested is never served (a candidate that added an untested class
   would otherwise score the same as the current model on it: zero for both).
2. **Overall.** ``candidate[metric] >= current[metric] - tolerance``.
3. **Per class.** For every class the current model knows, its recall falls by at most
   ``max_recall_drop``.
4. **New classes.** Every class the current model has never seen (``unseen_classes`` in its
   metrics, from ``training.evaluate``) reaches at least ``min_new_class_recall`` on its test
   images. The current model scores zero on such a class, so "no recall lost" says nothing
   about it: without this check a candidate that never predicts its new class would pass.

With no current model only coverage applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from imgclf.evaluation import GATE_METRIC

GATE_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


@dataclass
class GateDecision:
    """The gate's verdict, with both scores, for the report, the registry and the API.

    ``blocked`` names each class that stopped promotion and why (lacking test images, or a
    recall drop); ``needs`` says how many more test images each untested class needs.
    """

    promote: bool
    metric: str
    candidate: float
    current: float | None
    tolerance: float
    reason: str
    min_test_images: int = 0
    max_recall_drop: float = 1.0
    min_new_class_recall: float = 0.0
    blocked: dict[str, str] = field(default_factory=dict)
    needs: dict[str, int] = field(default_factory=dict)

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


def recall_drops(
    candidate_metrics: dict, current_metrics: dict, max_recall_drop: float
) -> dict[str, float]:
    """Classes the current model knows whose recall fell by more than ``max_recall_drop``.

    Classes with no test image, and classes the current model never had (recall zero), cannot
    lose recall and are not checked here (coverage checks them).
    """
    drops = {}
    known = current_metrics.get("per_class", {})
    for name, scores in candidate_metrics.get("per_class", {}).items():
        if name not in known or not scores.get("support"):
            continue
        drop = float(known[name]["recall"]) - float(scores["recall"])
        if drop > max_recall_drop + 1e-12:
            drops[name] = drop
    return drops


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


def check_arguments(
    metric: str, tolerance: float, min_test: int, max_drop: float, min_new: float = 0.0
) -> None:
    if metric not in GATE_METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(GATE_METRICS)}")
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance}: must be zero or positive")
    if min_test < 0:
        raise ValueError(f"min_test_images={min_test}: must be zero or positive")
    if not 0 <= max_drop <= 1:
        raise ValueError(f"max_recall_drop={max_drop}: expected 0 to 1")
    if not 0 <= min_new <= 1:
        raise ValueError(f"min_new_class_recall={min_new}: expected 0 to 1")


def _block_untested(decision: GateDecision, candidate_metrics: dict) -> str:
    """Check 1: fill ``needs`` and ``blocked`` for classes lacking test images; the reason."""
    least = decision.min_test_images
    decision.needs = coverage(candidate_metrics, least)
    for name, missing in decision.needs.items():
        decision.blocked[name] = (
            f"{least - missing} test image(s); at least {least} needed ({missing} more)"
        )
    if not decision.needs:
        return ""
    listed = ", ".join(f"{name!r} needs {n} more" for name, n in decision.needs.items())
    return (
        f"not every class was tested: {listed} test image(s) (at least {least} per class; "
        "upload more images of these classes)"
    )


def _block_recall_drops(decision: GateDecision, candidate_metrics, current_metrics) -> str:
    """Check 3: block the classes that lost too much recall; the reason."""
    limit = decision.max_recall_drop
    drops = recall_drops(candidate_metrics, current_metrics, limit)
    for name, drop in drops.items():
        decision.blocked[name] = f"recall fell by {drop:.4f} (at most {limit:g})"
    if not drops:
        return ""
    listed = ", ".join(f"{name!r} by {drop:.4f}" for name, drop in drops.items())
    return f"recall fell by more than {limit:g} for {listed}"


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


def gate(
    candidate_metrics: dict,
    current_metrics: dict | None,
    metric: str = GATE_METRIC,
    tolerance: float = 0.0,
    min_test_images: int = 0,
    max_recall_drop: float = 1.0,
    min_new_class_recall: float = 0.0,
) -> GateDecision:
    """Decide whether a candidate may be promoted over the current model (see the module).

    Both metric dicts must come from the same test set (``evaluation.classification_metrics``).

    Raises:
        ValueError: unknown metric, a negative tolerance or minimum, a drop outside 0 to 1, or
            a metric missing from a dict.
    """
    check_arguments(metric, tolerance, min_test_images, max_recall_drop, min_new_class_recall)
    candidate = float(candidate_metrics[metric])
    current = float(current_metrics[metric]) if current_metrics is not None else None
    decision = GateDecision(
        promote=True,
        metric=metric,
        candidate=candidate,
        current=current,
        tolerance=tolerance,
        reason="",
        min_test_images=min_test_images,
        max_recall_drop=max_recall_drop,
        min_new_class_recall=min_new_class_recall,
    )
    untested = _block_untested(decision, candidate_metrics)
    if current is None:
        decision.promote = not untested
        decision.reason = untested or "no current model: the candidate becomes the first"
        return decision
    worse = (
        f"candidate {metric} {candidate:.4f} is worse than current {current:.4f} by more "
        f"than the tolerance {tolerance:g}"
        if candidate < current - tolerance
        else ""
    )
    reasons = [
        untested,
        worse,
        _block_recall_drops(decision, candidate_metrics, current_metrics),
        _block_weak_new_classes(decision, candidate_metrics, current_metrics),
    ]
    if any(reasons):
        decision.promote = False
        decision.reason = "; ".join(r for r in reasons if r) + "; the current model stays"
        return decision
    verdict = "better than" if candidate > current else "not worse than"
    new = current_metrics.get("unseen_classes")
    decision.reason = (
        f"candidate {metric} {candidate:.4f} is {verdict} current {current:.4f} "
        f"(tolerance {tolerance:g}); every class tested, no class lost more than "
        f"{max_recall_drop:g} recall"
        + (f", new classes recognised (recall at least {min_new_class_recall:g})" if new else "")
    )
    return decision
