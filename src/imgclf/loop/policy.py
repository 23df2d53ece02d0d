"""Automatic retraining: when a retrain starts by itself, and why.

The policy (``AUTO_RETRAIN=1``) queues a retrain when, since the last retrain that ran to a
decision (promoted or rejected), at least ``AUTO_RETRAIN_MIN_IMAGES`` new labelled images
arrived (uploads and feedback alike), or, with ``AUTO_RETRAIN_ON_DRIFT=1``, when drift is
detected (``imgclf.loop.drift``). Never while a retrain is queued or running (the store allows
one), and never sooner than ``AUTO_RETRAIN_MIN_INTERVAL_S`` after the previous automatic one. Every
automatic job records why it was started. Workers evaluate it (``imgclf.loop.worker``); the API
shows it (``GET /policy``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from imgclf.config import LoopSettings, Settings
from imgclf.data import manifest
from imgclf.loop import jobs
from imgclf.loop.drift import DriftVerdict
from imgclf.model import registry
from imgclf.store import JobConflict, JobState, Store

log = logging.getLogger(__name__)

#: Jobs after which uploaded images count as used: they ran to a decision.
DECIDED = (JobState.PROMOTED, JobState.REJECTED)


def new_images(uploads_dir: Path, since: float) -> int:
    """Labelled images in upload batches stored after ``since`` (a Unix time)."""
    if not uploads_dir.is_dir():
        return 0
    count = 0
    for batch in uploads_dir.iterdir():
        if batch.name.startswith(".") or not batch.is_dir():
            continue
        try:
            if (batch / manifest.FILE).stat().st_mtime <= since:
                continue
        except OSError:
            continue
        count += len(manifest.read(batch) or [])
    return count


def status(
    settings: Settings,
    loop: LoopSettings,
    store: Store,
    drift: Callable[[], dict] | None = None,
    now: float | None = None,
) -> dict:
    """Where the policy stands: its settings, what it counted, whether it is due and why,
    and when it can fire next.

    Args:
        drift: returns ``drift.assess``'s report (only called when drift is a trigger).
    """
    now = time.time() if now is None else now
    decided = store.last_job(jobs.KIND, states=DECIDED)
    # the images a retrain used are those there when it started (and loaded its data)
    since = (decided["started_at"] or decided["created_at"]) if decided else 0.0
    last_auto = store.last_job(jobs.KIND, trigger="auto")
    live = store.live_job(jobs.KIND)
    arrived = new_images(settings.uploads_dir, since)
    report = drift() if loop.auto_on_drift and drift else {}
    verdict = report.get("verdict")
    next_allowed = last_auto["created_at"] + loop.auto_min_interval_s if last_auto else now
    reasons = _reasons(loop, arrived, verdict, report.get("clients", 0))
    waiting = _waiting(settings, loop, live, last_auto, next_allowed, now)
    if verdict == DriftVerdict.DRIFT and not reasons and arrived < loop.auto_min_images:
        waiting.append(
            f"drift seen in inputs from only {report.get('clients', 0)} distinct client(s); "
            f"AUTO_RETRAIN_DRIFT_MIN_CLIENTS={loop.drift_min_clients} needed (one client can "
            "fake drift), or an admin retrains (POST /retrain)"
        )
    if not reasons:
        waiting.append(
            f"{arrived} of {loop.auto_min_images} new labelled images"
            + (", no drift" if loop.auto_on_drift else "")
        )
    return {
        "enabled": loop.auto_retrain,
        "min_images": loop.auto_min_images,
        "on_drift": loop.auto_on_drift,
        "min_interval_s": loop.auto_min_interval_s,
        "new_images": arrived,
        "counted_since": since or None,
        "drift": verdict,
        "last_auto_job": last_auto["id"] if last_auto else None,
        "next_allowed_at": max(next_allowed, now),
        "due": not waiting,
        "reasons": reasons,
        "waiting_for": waiting,
        "next": _next(loop, waiting, reasons, next_allowed, now),
    }


def _reasons(loop: LoopSettings, arrived: int, verdict: str | None, clients: int) -> list[str]:
    """What makes a retrain due: enough new labelled images, or drift seen in the inputs of
    at least ``AUTO_RETRAIN_DRIFT_MIN_CLIENTS`` distinct clients."""
    reasons = []
    if arrived >= loop.auto_min_images:
        reasons.append(
            f"{arrived} new labelled images since the last retrain "
            f"(AUTO_RETRAIN_MIN_IMAGES={loop.auto_min_images})"
        )
    if verdict == DriftVerdict.DRIFT and clients >= loop.drift_min_clients:
        reasons.append(
            f"drift detected in production inputs from {clients} distinct clients "
            "(AUTO_RETRAIN_ON_DRIFT=1)"
        )
    return reasons


def _waiting(settings, loop, live, last_auto, next_allowed: float, now: float) -> list[str]:
    """What holds a retrain back: the policy off, no model, a live job, the interval."""
    waiting = []
    if not loop.auto_retrain:
        waiting.append("the policy is off (AUTO_RETRAIN=0)")
    if registry.current_version(settings.models_dir) is None:
        waiting.append("there is no current model to retrain")
    if live:
        waiting.append(f"retrain job {live['id']} is {live['state']}")
    if now < next_allowed:
        waiting.append(
            f"the last automatic retrain was {now - last_auto['created_at']:.0f} s ago "
            f"(AUTO_RETRAIN_MIN_INTERVAL_S={loop.auto_min_interval_s:g})"
        )
    return waiting


def _next(loop: LoopSettings, waiting: list, reasons: list, next_allowed: float, now) -> str:
    if not waiting:
        return "now: " + "; ".join(reasons)
    if not loop.auto_retrain:
        return "never: the policy is off (set AUTO_RETRAIN=1)"
    if reasons and now < next_allowed and len(waiting) == 1:
        return f"in {next_allowed - now:.0f} s, when the minimum interval has passed"
    return "when " + "; ".join(waiting) + " changes"


def maybe_queue(
    settings: Settings,
    loop: LoopSettings,
    store: Store,
    drift: Callable[[], dict] | None = None,
) -> dict | None:
    """Queue an automatic retrain if the policy is due; returns the job, or None."""
    if not loop.auto_retrain:
        return None
    state = status(settings, loop, store, drift)
    if not state["due"]:
        waiting = "; ".join(state["waiting_for"])
        log.debug("retraining policy evaluated: not due: %s; next %s", waiting, state["next"])
        return None
    reason = "automatic: " + "; ".join(state["reasons"])
    try:
        job = jobs.queue_retrain(store, settings, {}, trigger="auto", reason=reason)
    except JobConflict:  # another worker queued one a moment ago
        return None
    log.info("queued retrain job %s (%s)", job["id"], reason)
    return job
