"""Register a trained candidate, decide whether it replaces the current model, and promote it.

The one place where that decision is made: the train and retrain notebooks call
``register_and_decide`` and display the ``Outcome``; the retrain job reads the same
``Outcome`` back from the run's summary to know how the job ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgclf import gate, registry, training
from imgclf import model as modelling
from imgclf.evaluation import GATE_METRIC
from imgclf.store import JobState

#: What a caller may ask for: the gate decides, or the candidate is (never) promoted regardless.
POLICIES = ("if-not-worse", "always", "never")


@dataclass(frozen=True)
class Outcome:
    """How a candidate ended: registered as ``version``, promoted or not, and why."""

    version: str
    promoted: bool
    decision: gate.GateDecision
    parent_version: str | None = None

    @property
    def state(self) -> JobState:
        """``promoted`` or ``rejected``: the final state of a retrain job with this outcome."""
        return JobState.PROMOTED if self.promoted else JobState.REJECTED

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "promoted": self.promoted,
            "parent_version": self.parent_version,
            "decision": self.decision.as_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict | None) -> Outcome:
        """Read an outcome back (from a run's summary).

        Raises:
            ValueError: ``values`` is not what ``as_dict`` wrote (or is missing).
        """
        if not isinstance(values, dict) or not {"version", "promoted", "decision"} <= set(values):
            raise ValueError(f"not a candidate's outcome: {values!r}")
        return cls(
            version=values["version"],
            promoted=bool(values["promoted"]),
            decision=gate.GateDecision(**values["decision"]),
            parent_version=values.get("parent_version"),
        )

    def summary(self) -> dict:
        """The outcome as the run summary records it (``outcome``, plus flat figures)."""
        decision = self.decision
        return {
            "outcome": self.as_dict(),
            "version": self.version,
            "promoted": self.promoted,
            "decision": self.state.value,
            "reason": decision.reason,
            "metric": decision.metric,
            "candidate": decision.candidate,
            "current": decision.current,
            "blocked": decision.blocked,
        }


def score_current(models_dir: Path, dataset: training.Dataset) -> tuple[str | None, dict | None]:
    """Score the current model on the candidate's test set.

    Returns:
        ``(version, metrics)``; metrics are None when there is no current model, or when its
        classes are not the first classes of the data set (then the two cannot be compared on
        the same labels). A current model that lacks classes the data brought scores zero on
        them (see ``training.evaluate``).
    """
    version = registry.current_version(models_dir)
    if version is None:
        return None, None
    classes = registry.metadata(models_dir, version)["class_names"]
    if dataset.class_names[: len(classes)] != classes:
        return version, None
    current_model = modelling.load_model(registry.model_path(models_dir, version))
    metrics, _ = training.evaluate(current_model, dataset.test)
    return version, metrics


def _decide(
    candidate_metrics: dict,
    current: str | None,
    current_metrics: dict | None,
    policy: str,
    checks: dict,
) -> gate.GateDecision:
    decision = gate.gate(candidate_metrics, current_metrics, **checks)
    if policy != "if-not-worse":
        decision.promote = policy == "always"
        decision.reason = f"promote={policy!r}: the gate was not asked ({decision.reason})"
        return decision
    if current and current_metrics is None:
        decision = gate.gate(candidate_metrics, None, **checks)
        if decision.promote:
            decision.reason = (
                f"current model {current} has other classes: the new model replaces it"
            )
    return decision


def register_and_decide(
    models_dir: Path,
    model,
    dataset: training.Dataset,
    candidate_metrics: dict,
    record: training.TrainingRecord,
    policy: str = "if-not-worse",
    metric: str = GATE_METRIC,
    tolerance: float = 0.0,
    min_test_images: int = 0,
    max_recall_drop: float = 1.0,
    min_new_class_recall: float = 0.0,
) -> tuple[Outcome, dict | None]:
    """Register a trained candidate, gate it against the current model, promote if it passes.

    The candidate is always registered (a rejected one too, with the gate's decision in its
    metadata, so that a person can still promote it by hand). The checks are the gate's
    (``gate.gate``): every class tested by ``min_test_images``, the overall ``metric`` within
    ``tolerance``, no class losing more than ``max_recall_drop`` recall, every class new to the
    current model recognised with at least ``min_new_class_recall``.

    Returns:
        ``(outcome, current_metrics)``: the outcome, and the current model's metrics on the
        same test set (None when there was no comparable current model).

    Raises:
        ValueError: an unknown policy or gate metric, or a gate figure out of range.
    """
    if policy not in POLICIES:
        raise ValueError(f"promote={policy!r}: expected one of {', '.join(POLICIES)}")
    checks = {
        "metric": metric,
        "tolerance": tolerance,
        "min_test_images": min_test_images,
        "max_recall_drop": max_recall_drop,
        "min_new_class_recall": min_new_class_recall,
    }
    gate.check_arguments(  # before the current model is scored: a bad figure fails at once
        metric, tolerance, min_test_images, max_recall_drop, min_new_class_recall
    )
    current, current_metrics = score_current(models_dir, dataset)
    decision = _decide(candidate_metrics, current, current_metrics, policy, checks)
    version = training.register(
        models_dir, model, dataset, candidate_metrics, record, extra={"gate": decision.as_dict()}
    )
    if decision.promote:
        registry.promote(models_dir, version)
    return Outcome(version, decision.promote, decision, record.parent_version), current_metrics
