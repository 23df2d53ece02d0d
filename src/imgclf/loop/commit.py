"""The runner's half of a promotion (``make train``, ``make retrain``, the job worker): before
the notebook starts, the version number it registers under is reserved in the database
(``reserve``); when it has ended, a candidate the gate passed is made current by
compare-and-swap on the version it was compared with (``settle``). The notebook's kernel never
sees the database (its URL is a secret), and a promotion never replaces a model the gate did
not compare with.

Light on purpose: no Keras (the worker imports this between jobs).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from imgclf.model import registry
from imgclf.store.base import UNAVAILABLE, unavailable
from imgclf.store.pointer import ANY

#: Waits between tries at making a candidate current while the database is away (about a
#: minute in all; then the run fails, saying which version to promote by hand).
SETTLE_RETRY_S = (1, 2, 4, 8, 15, 30)

log = logging.getLogger(__name__)


def settle_summary(summary: dict, models_dir: Path, ledger) -> dict:
    """Make a run's pending candidate current (``summary["outcome"]`` as
    ``promotion.Outcome.summary`` wrote it) and return the summary as it ended: promoted, or
    rejected with the reason when the current model changed meanwhile.

    Raises:
        RuntimeError: the database stayed unavailable (the message names the version).
    """
    outcome = summary.get("outcome")
    if not isinstance(outcome, dict) or not outcome.get("pending"):
        return summary
    version = outcome["version"]
    expected = ANY if outcome.get("policy") == "always" else outcome.get("compared_with")
    for attempt, wait in enumerate((*SETTLE_RETRY_S, None)):
        try:
            ledger.promote_version(models_dir, version, expected)
            break
        except registry.PointerMoved as moved:
            log.warning("%s", moved)
            outcome["promoted"] = False
            outcome["decision"] = {**outcome["decision"], "promote": False, "reason": str(moved)}
            summary.update(promoted=False, decision="rejected", reason=str(moved))
            break
        except UNAVAILABLE as failure:
            if wait is None:
                raise RuntimeError(
                    f"{version} passed the gate but the database stayed unavailable "
                    f"({unavailable(failure)}): it is registered, not current; promote it by "
                    f"hand (imgclf models promote {version}) once the database is back"
                ) from None
            log.error("making %s current failed (%s); retrying in %d s (try %d)",
                      version, unavailable(failure), wait, attempt + 1)  # fmt: skip
            time.sleep(wait)
    outcome["pending"] = False
    summary["outcome"] = outcome
    return summary


def settle(outcome, models_dir: Path, ledger):
    """``settle_summary`` for a ``promotion.Outcome``; returns the outcome as it ended."""
    ended = settle_summary(outcome.summary(), models_dir, ledger)["outcome"]
    return type(outcome).from_dict(ended)


def open_ledger(settings):
    """The database's model pointer for a notebook run by hand (no runner), or None, with a
    warning, where the database is not set up (then the registry's file lock: one machine)."""
    from imgclf.config import ConfigError
    from imgclf.store import Store

    try:
        return Store(settings.database_url)
    except ConfigError as error:
        log.warning("numbering and promoting under the registry's file lock: %s", error)
        return None
