"""Register a trained candidate, decide whether it replaces the current model, and promote it.

The one place where that decision is made: the train and retrain notebooks call
``register_and_decide`` and display the ``Outcome``; the retrain job reads the same
``Outcome`` back from the run's summary to know how the job ended.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from imgclf.loop import commit, evidence, gate, trustcheck
from imgclf.model import network, registry, training
from imgclf.model.batches import as_inputs
from imgclf.model.evaluation import GATE_METRIC
from imgclf.store.jobstates import JobState

#: What a caller may ask for: the gate decides, or the candidate is (never) promoted regardless.
POLICIES = ("if-not-worse", "always", "never")


@dataclass(frozen=True)
class Outcome:
    """How a candidate ended: registered as ``version``, promoted or not, and why."""

    version: str
    promoted: bool
    decision: gate.GateDecision
    parent_version: str | None = None
    #: The version the gate compared with (None: no current model), and the policy: a runner
    #: promotes only if that version is still current (unless the policy is "always").
    compared_with: str | None = None
    policy: str = "if-not-worse"
    #: Promoted by the gate, to be made current by the run's runner (``commit.settle``).
    pending: bool = False

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
            "compared_with": self.compared_with,
            "policy": self.policy,
            "pending": self.pending,
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
            compared_with=values.get("compared_with"),
            policy=values.get("policy", "if-not-worse"),
            pending=bool(values.get("pending", False)),
        )

    def headline(self) -> str:
        """The outcome in one line, for the report."""
        decision = self.decision
        current = "none" if decision.current is None else f"{decision.current:.4f}"
        scores = f"{decision.metric} {decision.candidate:.4f} against {current}"
        if self.pending:
            return (
                f"**PASSED THE GATE**: registered {self.version} ({scores}); made current when "
                f"the run ends if {self.compared_with or 'no model'} is still current. "
                f"{decision.reason}"
            )
        return f"**{self.state.upper()}**: registered {self.version} ({scores}). {decision.reason}"

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
            "verdict": decision.verdict,
            "inconclusive": decision.inconclusive,
        }


def score_current(
    models_dir: Path, dataset: training.Dataset
) -> tuple[str | None, dict | None, np.ndarray | None]:
    """Score the current model on the candidate's test set.

    Returns:
        ``(version, metrics, answers)``: metrics and the answer (class index) for each test
        image are None when there is no current model, or when its classes are not the first
        classes of the data set (then the two cannot be compared on the same labels). A
        current model that lacks classes the data brought scores zero on them (see
        ``training.evaluate``).
    """
    version = registry.current_version(models_dir)
    if version is None:
        return None, None, None
    classes = registry.metadata(models_dir, version)["class_names"]
    if dataset.class_names[: len(classes)] != classes:
        return version, None, None
    current_model = network.load_model(registry.model_path(models_dir, version))
    metrics, probabilities = training.evaluate(current_model, dataset.test)
    return version, metrics, probabilities.argmax(axis=1)


def trust_answers(models_dir: Path, current: str | None, model, dataset, record) -> tuple | None:
    """``(candidate, current)`` ``trustcheck.Answers`` on the test images of the classes the
    current model knows and on unlike images (``ood.sets``: noise, shuffled tiles, photos);
    None when either model has no calibration (trained before it existed)."""
    from imgclf.model import ood
    from imgclf.model.prediction import Predictor

    if current is None or record.trust is None:
        return None
    known = registry.metadata(models_dir, current)
    if "calibration" not in known:
        return None
    keep = np.asarray(dataset.test.labels) < len(known["class_names"])
    if not keep.any():
        return None
    images = as_inputs(np.asarray(dataset.test.images)[keep])
    labels = np.asarray(dataset.test.labels)[keep]
    found = ood.sets(
        images,
        tuple(known["image_size"]),
        known["color_mode"],
        known["class_names"],
        other_data=False,
    )
    unlike = np.concatenate([found[name] for name in sorted(found)]).astype(np.float32)
    candidate = Predictor("candidate", {"calibration": record.trust.calibration}, model)
    candidate.novelty = record.trust.novelty
    return tuple(
        trustcheck.answers(predictor, images, labels, unlike)
        # both by JAX: the candidate is not registered yet, and a paired comparison compares
        # the models, not the runtimes
        for predictor in (candidate, Predictor.load(models_dir, current, runtime="jax"))
    )


def _decide(
    candidate_metrics: dict,
    current: str | None,
    current_metrics: dict | None,
    paired: evidence.Paired | None,
    policy: str,
    checks: dict,
    trust: tuple | None = None,
) -> gate.GateDecision:
    decision = gate.gate(candidate_metrics, current_metrics, paired, trust=trust, **checks)
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


def _pair(model, dataset: training.Dataset, candidate_answers, current_answers):
    """Both models' answers on the test set, with its fingerprint (None without a current)."""
    if current_answers is None:
        return None
    if candidate_answers is None:
        candidate_answers = training.evaluate(model, dataset.test)[1].argmax(axis=1)
    return evidence.Paired(
        dataset.test.labels,
        candidate_answers,
        current_answers,
        dataset.class_names,
        training.test_fingerprint(dataset),
    )


def _evidence(current: str | None, paired, trust) -> dict:
    """What the candidate's metadata keeps of the gate's evidence (``gate_evidence``): both
    models' answers on the test images, and those the trust checks compared."""
    if paired is None:
        return {}
    kept = {"current_version": current, **paired.as_dict()}
    if trust is not None:
        kept["trust"] = {"candidate": trust[0].as_dict(), "current": trust[1].as_dict()}
    return {"gate_evidence": kept}


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
    max_recall_drop: float = 0.05,
    min_new_class_recall: float = 0.0,
    alpha: float = evidence.ALPHA,
    candidate_answers: np.ndarray | None = None,
    version: str | None = None,
    ledger=None,
) -> tuple[Outcome, dict | None]:
    """Register a trained candidate, gate it against the current model, promote if it passes.

    The candidate is always registered (a rejected one too, so that a person can still promote
    it), with both models' answers and the test set's fingerprint (``gate_evidence``). The
    checks are the gate's (``gate.gate``): every class tested by ``min_test_images``, no class
    shown worse by more than ``max_recall_drop`` and the overall ``metric`` not shown worse by
    more than ``tolerance`` (paired tests at family-wise level ``alpha``), every class new to
    the current model recognised with ``min_new_class_recall``.

    Args:
        candidate_answers: the candidate's class index for each test image (default: computed
            again from the model).
        version: reserved by the run's runner, which makes it current (outcome ``pending``).
        ledger: else the database's ``ModelPointer`` to number and promote through (a
            notebook run by hand); without either, the registry's file lock (one machine).

    Returns:
        ``(outcome, current_metrics)``: the outcome, and the current model's metrics on the
        same test set (None when there was no comparable current model).

    Raises:
        ValueError: an unknown policy or gate metric, or a gate figure out of range.
    """
    if policy not in POLICIES:
        raise ValueError(f"promote={policy!r}: expected one of {', '.join(POLICIES)}")
    figures = {
        "tolerance": tolerance,
        "min_test_images": min_test_images,
        "max_recall_drop": max_recall_drop,
        "min_new_class_recall": min_new_class_recall,
        "alpha": alpha,
    }
    gate.check_arguments(metric, **figures)  # before the current model is scored
    current, current_metrics, current_answers = score_current(models_dir, dataset)
    paired = _pair(model, dataset, candidate_answers, current_answers)
    trust = trust_answers(models_dir, current, model, dataset, record) if paired else None
    checks = {"metric": metric, **figures}
    decision = _decide(candidate_metrics, current, current_metrics, paired, policy, checks, trust)
    extra = {"gate": decision.as_dict(), **_evidence(current, paired, trust)}
    registration = (models_dir, model, dataset, candidate_metrics, record, extra)
    return _register(registration, decision, current, policy, version, ledger), current_metrics


def _register(registration: tuple, decision, current, policy, version, ledger) -> Outcome:
    """Register the candidate (as ``version``, or a number the ledger reserves, or the next
    under the file lock) and promote it if the gate passed it, unless its runner will."""
    models_dir, record = registration[0], registration[4]
    by_runner = version is not None
    if version is None and ledger is not None:
        version = ledger.reserve_version(models_dir)
    version = training.register(*registration, version=version)
    outcome = Outcome(
        version, decision.promote, decision, record.parent_version, current, policy,
        pending=decision.promote,
    )  # fmt: skip
    if not decision.promote or by_runner:
        return outcome
    if ledger is not None:
        return commit.settle(outcome, models_dir, ledger)
    registry.promote(models_dir, version)
    return replace(outcome, pending=False)
