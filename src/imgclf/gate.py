"""The promotion gate: a candidate replaces the current model only if it is not worse."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from imgclf.evaluation import GATE_METRIC

GATE_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


@dataclass
class GateDecision:
    """The gate's verdict, with both scores, for the report, the registry and the API."""

    promote: bool
    metric: str
    candidate: float
    current: float | None
    tolerance: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def gate(
    candidate_metrics: dict,
    current_metrics: dict | None,
    metric: str = GATE_METRIC,
    tolerance: float = 0.0,
) -> GateDecision:
    """Decide whether a candidate may be promoted over the current model.

    Both metric dicts must come from the same test set. The candidate passes when
    ``candidate >= current - tolerance``; with no current model it always passes.

    Raises:
        ValueError: unknown metric, negative tolerance, or a metric missing from a dict.
    """
    if metric not in GATE_METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(GATE_METRICS)}")
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance}: must be zero or positive")
    candidate = float(candidate_metrics[metric])
    if current_metrics is None:
        return GateDecision(
            True,
            metric,
            candidate,
            None,
            tolerance,
            "no current model: the candidate becomes the first",
        )
    current = float(current_metrics[metric])
    if candidate >= current - tolerance:
        verdict = "better than" if candidate > current else "not worse than"
        return GateDecision(
            True,
            metric,
            candidate,
            current,
            tolerance,
            f"candidate {metric} {candidate:.4f} is {verdict} current {current:.4f} "
            f"(tolerance {tolerance:g})",
        )
    return GateDecision(
        False,
        metric,
        candidate,
        current,
        tolerance,
        f"candidate {metric} {candidate:.4f} is worse than current {current:.4f} by more than "
        f"the tolerance {tolerance:g}; the current model stays",
    )
