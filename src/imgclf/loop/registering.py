"""A registering run: ``make train``, ``make retrain`` and the job worker run a notebook that
registers a model, and this module holds the whole of it.

1. Reserve the version number in the database (``store.pointer``) before the notebook starts:
   a second host racing for it takes the next; a number whose run failed is never reused.
2. Run the notebook through ``pipeline.run_notebook`` (papermill) with that ``model_version``.
   The notebook's kernel never sees the database (its URL is a secret).
3. Read the outcome the notebook recorded, once, into an ``Outcome``.
4. Make a candidate the gate passed current by compare-and-swap on the version it was compared
   with (``settle``): a promotion never replaces a model the gate did not compare with. While
   the database is away it retries for about a minute, then fails naming the version.

Light on purpose: no Keras (the worker imports this between jobs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from imgclf import pipeline, runs
from imgclf.config import ConfigError, Settings, get_settings
from imgclf.loop.outcome import Outcome
from imgclf.model import registry
from imgclf.store.base import UNAVAILABLE, unavailable
from imgclf.store.pointer import ANY

#: The notebooks that register a model.
REGISTERING = ("train", "retrain")
#: Waits between tries at making a candidate current while the database is away (about a
#: minute in all; then the run fails, saying which version to promote by hand).
SETTLE_RETRY_S = (1, 2, 4, 8, 15, 30)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredRun:
    """A registering run that ended: its folder and summary, and the candidate's outcome."""

    run: pipeline.RunResult
    outcome: Outcome


def open_pointer(settings: Settings, required: bool = True):
    """The database's model pointer (a ``Store``: ``store.pointer.ModelPointer``).

    With ``required`` False (a notebook run by hand), None with a warning where no database is
    set up: numbering and promotion then take the registry's file lock (one machine).

    Raises:
        pipeline.PipelineError: ``required`` and the database cannot be used (says why).
    """
    from imgclf.store import Store

    try:
        return Store(settings.database_url)
    except ConfigError as error:
        if not required:
            log.warning("numbering and promoting under the registry's file lock: %s", error)
            return None
        raise pipeline.PipelineError(f"the model registry's database: {error}") from None
    except UNAVAILABLE as error:
        if not required:
            raise
        raise pipeline.PipelineError(
            f"the model registry's database is unavailable ({unavailable(error)}): version "
            "numbers and the current model live there; nothing was run"
        ) from None


def run(
    name: str, parameters: dict | None = None, settings: Settings | None = None, **options
) -> RegisteredRun:
    """Run the registering notebook ``name`` (``train`` or ``retrain``) from reservation to
    settlement (see the module); ``options`` are ``pipeline.run_notebook``'s (``run_dir``,
    ``show_code``, ``log_output``).

    Raises:
        pipeline.PipelineError: not a registering notebook, no database, a cell raised, no
            outcome recorded, or the database stayed away when the candidate was to be made
            current (the report is still written and the message says where it is).
    """
    if name not in REGISTERING:
        raise pipeline.PipelineError(f"{name!r} registers no model; expected one of {REGISTERING}")
    settings = settings or get_settings()
    pointer = open_pointer(settings)
    try:
        version = pointer.reserve_version(settings.models_dir)
        result = pipeline.run_notebook(
            name,
            {**(parameters or {}), "model_version": version},
            settings,
            after=lambda folder: _settle_run(folder, settings.models_dir, pointer),
            **options,
        )
    finally:
        pointer.engine.dispose()
    return RegisteredRun(result, outcome_of(result.summary))


def outcome_of(summary: dict) -> Outcome:
    """The outcome a registering notebook recorded in its summary.

    Raises:
        RuntimeError: it recorded none.
    """
    try:
        return Outcome.from_dict(summary.get("outcome"))
    except ValueError:
        raise RuntimeError("the notebook ended without recording an outcome") from None


def _settle_run(run_dir: Path, models_dir: Path, pointer) -> None:
    """After the notebook: settle its outcome and record the outcome as it ended."""
    outcome = outcome_of(runs.read_summary(run_dir))
    ended = settle(outcome, models_dir, pointer)
    if ended != outcome:
        runs.write_summary(run_dir, **ended.summary())


def settle(outcome: Outcome, models_dir: Path, pointer) -> Outcome:
    """Make a pending candidate current (compare-and-swap on the version the gate compared it
    with, any with the policy ``always``); returns the outcome as it ended: promoted, or
    rejected with the reason when the current model changed meanwhile.

    Raises:
        RuntimeError: the database stayed unavailable (the message names the version).
    """
    if not outcome.pending:
        return outcome
    expected = ANY if outcome.policy == "always" else outcome.compared_with
    for attempt, wait in enumerate((*SETTLE_RETRY_S, None)):
        try:
            pointer.promote_version(models_dir, outcome.version, expected)
            return replace(outcome, pending=False)
        except registry.PointerMoved as moved:
            log.warning("%s", moved)
            decision = replace(outcome.decision, promote=False, reason=str(moved))
            return replace(outcome, promoted=False, pending=False, decision=decision)
        except UNAVAILABLE as failure:
            if wait is None:
                raise RuntimeError(
                    f"{outcome.version} passed the gate but the database stayed unavailable "
                    f"({unavailable(failure)}): it is registered, not current; promote it by "
                    f"hand (imgclf models promote {outcome.version}) once the database is back"
                ) from None
            log.error(
                "making %s current failed (%s); retrying in %d s (try %d)",
                outcome.version,
                unavailable(failure),
                wait,
                attempt + 1,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")
