"""Register a trained candidate, decide whether it replaces the current model, and promote it.

The one place where that decision is made: the train and retrain notebooks call
``register_and_decide`` and display the ``Outcome`` (``loop.outcome``); the registering run
(``loop.registering``) reads it back once and makes a passed candidate current.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imgclf import config
from imgclf.loop import answers, evidence, gate, registering, trustcheck
from imgclf.loop.outcome import Outcome
from imgclf.model import network, registry, training

#: What a caller may ask for: the gate decides, or the candidate is (never) promoted regardless.
POLICIES = ("if-not-worse", "always", "never")


@dataclass(frozen=True)
class Setup:
    """What a registering notebook (train, retrain) starts from: the settings, its folders,
    the gate's thresholds resolved once, and the devices training uses."""

    settings: config.Settings
    loop: config.LoopSettings
    data_dir: Path
    models_dir: Path
    thresholds: gate.GateThresholds
    placement: dict

    def devices(self) -> str:
        """The devices, in a sentence (Markdown)."""
        placement = self.placement
        return (
            f"Training on **{placement['count']} device(s)** ({placement['distribution']}): "
            f"{', '.join(placement['devices'])}"
        )


def prepare(data_dir: str = "", models_dir: str = "", seed: int = 1, **gate_given) -> Setup:
    """The shared setup of the train and retrain notebooks: settings (a parameter left empty
    is the setting's), the gate's thresholds (``gate_given``, None: the setting's), the seed,
    and the devices, chosen before a model is built.

    Raises:
        ValueError: a gate threshold out of range or unknown, or an unknown distribution.
    """
    from imgclf.model import batches

    settings = config.get_settings()
    loop = config.get_loop_settings()
    thresholds = gate.GateThresholds.from_settings(loop, **gate_given)
    network.set_seed(seed)
    return Setup(
        settings,
        loop,
        Path(data_dir) if data_dir else settings.data_dir,
        Path(models_dir) if models_dir else settings.models_dir,
        thresholds,
        batches.distribute(settings.distribution),
    )


def show_decision(outcome: Outcome, metrics: dict[str, dict | None], candidate: dict) -> list:
    """What both notebooks display of a decision: the headline, both models' metrics
    (``metrics``: name -> metrics), the overall comparison, the per-class table and the
    smallest detectable drop."""
    from IPython.display import Markdown

    from imgclf import figures

    per_class = figures.per_class_table(candidate, outcome.decision)
    return [
        Markdown(outcome.headline()),
        figures.comparison_table(metrics),
        figures.overall_table(outcome.decision),
        Markdown(
            "Per class, paired against the current model (blocking rows in red, differences "
            "the test set cannot confirm in yellow):"
        ),
        figures.style_per_class(per_class),
        Markdown(gate.min_detectable(outcome.decision)),
    ]


@dataclass(frozen=True)
class Scored:
    """One model's single pass over the test images, all that the metrics and the trust checks
    need: the metrics, the uncalibrated probabilities (padded to the data set's classes) and
    the pooled features (``score``; the gate scores each model once), or, for a current model
    that kept its answers on this test set when it was registered, those (``kept``: it is not
    run again)."""

    metrics: dict
    probabilities: np.ndarray
    features: np.ndarray | None
    #: what computed them (the JAX forward pass, the same for both models)
    predictor: object = field(default=None, compare=False, repr=False)
    kept: answers.Answers | None = field(default=None, compare=False, repr=False)
    metadata: dict | None = field(default=None, compare=False, repr=False)


def score(model, split) -> Scored:
    """A trained candidate's pass over ``split`` (the notebooks' one evaluation), by the same
    JAX forward pass as the current model's (``score_current``): a paired comparison compares
    the models, not two ways of computing them."""
    from imgclf.model.prediction import Predictor

    predictor = Predictor("candidate", {}, model)
    features, outputs = predictor.outputs(split.images)
    metrics, probabilities = training.evaluate(model, split, predict=lambda _: outputs)
    return Scored(metrics, probabilities, features, predictor)


def score_current(models_dir: Path, dataset: training.Dataset) -> tuple:
    """Score the current model on the candidate's test set: its answers kept when it was
    registered (``loop.answers``), or one pass.

    Returns:
        ``(version, scored, predictor)``: ``scored`` (``Scored``) is None when there is no
        current model, or when its classes are not the first classes of the data set (then
        the two cannot be compared on the same labels); ``predictor`` (the loaded model) is
        None then too, and when its kept answers were read instead. A current model that lacks
        classes the data brought scores zero on them (see ``training.evaluate``).
    """
    from imgclf.model.prediction import Predictor

    version = registry.current_version(models_dir)
    if version is None:
        return None, None, None
    known = registry.metadata(models_dir, version)
    classes = known["class_names"]
    if dataset.class_names[: len(classes)] != classes:
        return version, None, None
    kept = answers.read(models_dir, version, dataset, known)
    if kept is not None:
        metrics, probabilities = training.evaluate(
            None, dataset.test, predict=lambda _: kept.outputs
        )
        return version, Scored(metrics, probabilities, None, None, kept, known), None
    # by JAX: the candidate is not registered yet, and a paired comparison compares the
    # models, not the runtimes
    predictor = Predictor.load(models_dir, version, runtime="jax")
    features, outputs = predictor.outputs(dataset.test.images)
    metrics, probabilities = training.evaluate(None, dataset.test, predict=lambda _: outputs)
    return version, Scored(metrics, probabilities, features, predictor, None, known), predictor


def _judged(candidate: Scored, model, record):
    """The candidate as it would be served: its temperature and unknown detector."""
    from imgclf.model.prediction import Predictor

    judged = candidate.predictor or Predictor("candidate", {}, model)
    judged.temperature = float(record.trust.calibration.get("temperature", 1.0))
    judged.novelty = record.trust.novelty
    return judged


def both_answers(current: tuple, candidate: Scored, model, dataset, record) -> tuple | None:
    """``(candidate, current)`` ``answers.Answers`` on every test image and on the unlike
    images made for the current model's classes (``answers.unlike_images``), from each model's
    one pass (or the current's kept answers); ``current``: ``(predictor, Scored)``. None when
    either model has no calibration (trained before it existed) or no test image is of the
    current model's classes."""
    predictor, current_scored = current
    known = current_scored.metadata or predictor.metadata
    if record.trust is None or "calibration" not in known:
        return None
    classes = len(known["class_names"])
    if not (np.asarray(dataset.test.labels) < classes).any():
        return None
    fingerprint = training.test_fingerprint(dataset)
    unlike = answers.unlike_images(dataset, known)
    mine = answers.answer(
        _judged(candidate, model, record),
        candidate.features,
        candidate.probabilities,
        unlike,
        fingerprint,
    )
    theirs = current_scored.kept or answers.answer(
        predictor,
        current_scored.features,
        current_scored.probabilities[:, :classes],
        unlike,
        fingerprint,
    )
    return mine, theirs


def trust_answers(current: tuple, candidate: Scored, model, dataset, record) -> tuple | None:
    """``(candidate, current)`` ``trustcheck.Answers`` on the test images of the classes the
    current model knows and on unlike images (``ood.sets``: noise, shuffled tiles, photos)
    (``both_answers``); None when there are none to compare."""
    both = both_answers(current, candidate, model, dataset, record)
    return None if both is None else _trust_of(both, dataset)


def _trust_of(both: tuple, dataset) -> tuple:
    labels = np.asarray(dataset.test.labels)
    keep = labels < both[1].classes
    return tuple(
        trustcheck.answers_from(
            each.probabilities[keep],
            None if each.unknown is None else each.unknown[keep],
            labels[keep],
            each.unlike_unknown,
        )
        for each in both
    )


def own_answers(
    candidate: Scored, model, dataset, record, both: tuple | None = None
) -> answers.Answers | None:
    """The candidate's answers to keep with its version (``loop.answers``): those the trust
    checks made where the current model has its classes and inputs, else made for its own."""
    if record.trust is None or candidate.features is None:
        return None
    own = {
        "class_names": list(dataset.class_names),
        "image_size": list(dataset.input_shape[:2]),
        "color_mode": record.color_mode,
    }
    if both is not None:
        mine, theirs = both
        if mine.classes == theirs.classes == len(own["class_names"]):
            return mine if mine.complete else None
    made = answers.answer(
        _judged(candidate, model, record),
        candidate.features,
        candidate.probabilities,
        answers.unlike_images(dataset, own),
        training.test_fingerprint(dataset),
    )
    return made if made.complete else None


def _decide(
    candidate_metrics: dict,
    current: str | None,
    current_metrics: dict | None,
    paired: evidence.Paired | None,
    policy: str,
    thresholds: gate.GateThresholds,
    trust: tuple | None = None,
) -> gate.GateDecision:
    decision = gate.gate(candidate_metrics, current_metrics, paired, thresholds, trust=trust)
    if policy != "if-not-worse":
        decision.promote = policy == "always"
        decision.reason = f"promote={policy!r}: the gate was not asked ({decision.reason})"
        return decision
    if current and current_metrics is None:
        decision = gate.gate(candidate_metrics, None, thresholds=thresholds)
        if decision.promote:
            decision.reason = (
                f"current model {current} has other classes: the new model replaces it"
            )
    return decision


def _pair(dataset: training.Dataset, candidate: Scored, current: Scored | None):
    """Both models' answers on the test set, with its fingerprint (None without a current)."""
    if current is None:
        return None
    return evidence.Paired(
        dataset.test.labels,
        candidate.probabilities.argmax(axis=1),
        current.probabilities.argmax(axis=1),
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
    candidate: Scored,
    record: training.TrainingRecord,
    thresholds: gate.GateThresholds,
    policy: str = "if-not-worse",
    version: str | None = None,
    pointer=None,
) -> tuple[Outcome, dict | None]:
    """Register a trained candidate, gate it against the current model, promote if it passes.

    The candidate is always registered (a rejected one too, so that a person can still promote
    it), with both models' answers and the test set's fingerprint (``gate_evidence``). The
    checks are the gate's (``gate.gate``) against ``thresholds``.

    Args:
        candidate: the candidate's one pass over the test set (``score``): its metrics, answers
            and features; the current model is scored once too (``score_current``).
        version: reserved by the registering run (``loop.registering``), which makes it
            current afterwards (the outcome is then ``pending``).
        pointer: else the database's model pointer (``store.pointer.ModelPointer``) to number
            and promote through (a notebook run by hand); without either, the registry's file
            lock (one machine).

    Returns:
        ``(outcome, current_metrics)``: the outcome, and the current model's metrics on the
        same test set (None when there was no comparable current model).

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"promote={policy!r}: expected one of {', '.join(POLICIES)}")
    gated = decide(models_dir, model, dataset, candidate, record, thresholds, policy)
    extra = {
        "gate": gated.decision.as_dict(),
        **_evidence(gated.current, gated.paired, gated.trust),
    }
    kept = {answers.FILE: gated.kept.to_bytes()} if gated.kept is not None else None
    registration = (models_dir, model, dataset, candidate.metrics, record, extra, kept)
    outcome = _register(registration, gated.decision, gated.current, policy, version, pointer)
    return outcome, gated.current_metrics


@dataclass(frozen=True)
class Gated:
    """The gate's decision on a candidate and what it rests on; ``kept``: the candidate's
    answers to keep with its version (``loop.answers``)."""

    decision: gate.GateDecision
    current: str | None
    current_metrics: dict | None
    paired: evidence.Paired | None
    trust: tuple | None
    kept: answers.Answers | None


def decide(
    models_dir: Path,
    model,
    dataset: training.Dataset,
    candidate: Scored,
    record: training.TrainingRecord,
    thresholds: gate.GateThresholds,
    policy: str = "if-not-worse",
) -> Gated:
    """Everything ``register_and_decide`` does before registering: the current model scored
    (or its kept answers read), the paired answers, the trust checks and the decision."""
    current, current_scored, predictor = score_current(models_dir, dataset)
    paired = _pair(dataset, candidate, current_scored)
    both = None
    if paired is not None:
        both = both_answers((predictor, current_scored), candidate, model, dataset, record)
    trust = None if both is None else _trust_of(both, dataset)
    current_metrics = current_scored.metrics if current_scored else None
    decision = _decide(
        candidate.metrics, current, current_metrics, paired, policy, thresholds, trust
    )
    kept = own_answers(candidate, model, dataset, record, both)
    return Gated(decision, current, current_metrics, paired, trust, kept)


def _register(registration: tuple, decision, current, policy, version, pointer) -> Outcome:
    """Register the candidate (as ``version``, or a number the pointer reserves, or the next
    under the file lock) and promote it if the gate passed it, unless its run will."""
    models_dir, record = registration[0], registration[4]
    by_runner = version is not None
    if version is None and pointer is not None:
        version = pointer.reserve_version(models_dir)
    version = training.register(*registration, version=version)
    outcome = Outcome(
        version,
        decision.promote,
        decision,
        record.parent_version,
        current,
        policy,
        pending=decision.promote,
    )
    if not decision.promote or by_runner:
        return outcome
    if pointer is not None:
        return registering.settle(outcome, models_dir, pointer)
    registry.promote(models_dir, version)
    return replace(outcome, pending=False)
