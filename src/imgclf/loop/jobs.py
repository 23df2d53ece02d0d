"""Retrain jobs: queued by the API, run by a worker (``imgclf worker``), followed in the database.

The API only queues (``queue_retrain``); a worker on any host claims the job and runs the
retrain notebook with papermill in its own process (``run_job``). While it runs, a heartbeat
thread writes the heartbeat, the progress (from the notebook's ``summary.json``) and the tail
of the job's log into the database every few seconds, so that ``GET /retrain/<id>`` shows them
whichever host runs the job. The outcome (promoted or rejected, with the gate's figures) is
read from the notebook's summary as a typed ``promotion.Outcome``. A worker killed mid-job
takes its kernel with it (a kernel exits when its parent dies); its job is failed by the store
once the heartbeat is older than ``store.HEARTBEAT_TIMEOUT_S``.

Cancelling (``store.cancel_job``) marks the job; the worker's watcher sees the mark within
``CANCEL_POLL_S``, kills the notebook's kernel and records ``cancelled``. The notebook only
registers a model in its last cells, and a registry version appears whole or not at all, so a
cancelled job registers nothing (unless it had already finished: then its outcome stands).
A kernel that dies on its own fails the job and says so (``imgclf.loop.kernels``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from imgclf import runs
from imgclf.config import Settings
from imgclf.loop import jobparams, kernels
from imgclf.store import FINAL_STATES, UNAVAILABLE, JobConflict, JobState, Store, unavailable

KIND = "retrain"
HEARTBEAT_S = 5.0
#: How often a running job's worker looks for a cancel request.
CANCEL_POLL_S = 1.0
LOG_LINES = 30
STAGES = {"queued": 0.0, "starting": 0.02, "loading data": 0.05, "fine-tuning": 0.1}
STAGES.update({"evaluating": 0.9, "done": 0.97})

log = logging.getLogger(__name__)


def queue_retrain(
    store: Store,
    settings: Settings,
    parameters: dict,
    trigger: str = "manual",
    reason: str | None = None,
) -> dict:
    """Queue a retrain job for a worker; returns the job (``reason``: why it was started).

    Raises:
        store.JobConflict: a retrain job is already queued or running.
    """
    run_dir = runs.new_run_dir(settings.reports_dir, KIND)
    try:
        return store.create_job(KIND, parameters, str(run_dir), trigger, reason)
    except JobConflict:
        run_dir.rmdir()
        raise


def describe(job: dict, log_lines: int = LOG_LINES) -> dict:
    """A job as the API shows it: progress with a fraction, the log's tail, the report link."""
    progress = dict(job.get("progress") or {})
    progress.setdefault("stage", job["state"])
    progress["fraction"] = _fraction(job["state"], progress)
    run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
    has_report = bool(run_dir and (run_dir / runs.REPORT_FILE).is_file())
    return {
        **job,
        "progress": progress,
        "log_tail": job.get("log_tail", [])[-log_lines:] if log_lines else [],
        "report": f"/reports/{run_dir.name}/{runs.REPORT_FILE}" if has_report else None,
    }


def _fraction(state: str, progress: dict) -> float:
    if state in FINAL_STATES:
        return 1.0
    stage, epoch, epochs = progress.get("stage"), progress.get("epoch"), progress.get("epochs")
    if stage == "fine-tuning" and epoch and epochs:
        return round(0.1 + 0.8 * epoch / epochs, 3)
    return STAGES.get(stage or "", 0.0)


def _progress(run_dir: Path) -> dict:
    summary = runs.read_summary(run_dir) if run_dir.is_dir() else {}
    keys = ("stage", "epoch", "epochs", "val_loss", "val_accuracy", "current_version")
    return {key: summary[key] for key in keys if key in summary}


def _log_tail(run_dir: Path) -> str:
    path = run_dir / runs.LOG_FILE
    if not path.is_file():
        return ""
    with open(path, errors="replace") as lines:
        return "".join(deque(lines, maxlen=LOG_LINES))


class Watcher(threading.Thread):
    """Beside a running job: writes its heartbeat, progress and log tail every
    ``HEARTBEAT_S``, and stops its kernel as soon as a cancel request is seen."""

    def __init__(self, store: Store, job_id: str, run_dir: Path):
        super().__init__(name=f"job-{job_id}", daemon=True)
        self.store, self.job_id, self.run_dir = store, job_id, run_dir
        self.stop = threading.Event()
        self.cancelled = threading.Event()
        self.cancelled_at: float | None = None

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self.stop.wait(CANCEL_POLL_S):
            try:
                if not self.cancelled.is_set() and self.store.cancel_requested(self.job_id):
                    self.cancel()
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    last_beat = time.monotonic()
                    self.store.update_job(
                        self.job_id,
                        heartbeat=True,
                        progress=_progress(self.run_dir),
                        log_tail=_log_tail(self.run_dir),
                    )
            except Exception:  # the database is away for a moment: the next round tries again
                log.exception("watching job %s failed", self.job_id)

    def cancel(self) -> None:
        self.cancelled_at = time.time()
        self.cancelled.set()
        log.warning("job %s: cancel requested; stopping its kernel", self.job_id)
        stopped = kernels.stop_kernels()
        log.warning("job %s: stopped %d kernel(s)", self.job_id, stopped)


def _job_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / runs.LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


def run_job(store: Store, job: dict, settings: Settings) -> JobState:
    """Run a claimed (running) job to its end in this process; returns its final state."""
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _job_log(run_dir)
    logging.getLogger().addHandler(handler)
    watcher = Watcher(store, job["id"], run_dir)
    watcher.start()
    state, result, error = JobState.FAILED, {}, None
    started, oom_before = time.time(), kernels.oom_kills()
    try:
        log.info("job %s: running the retrain notebook (worker pid %d)", job["id"], os.getpid())
        registered = kernels.run_notebook(job, settings, watcher.cancelled, KIND)
        result, state = registered.run.summary, registered.outcome.state
    except Exception as failure:
        result = runs.read_summary(run_dir)
        if watcher.cancelled.is_set():
            state = JobState.CANCELLED
            stage = result.get("stage", "starting")
            error = f"cancelled by request after {watcher.cancelled_at - started:.0f} s ({stage})"
        else:
            error = kernels.explain(failure, oom_before, kernels.oom_kills())
            log.error("job %s failed: %s", job["id"], error)
    finally:
        watcher.stop.set()
        watcher.join(timeout=HEARTBEAT_S + 1)
        kernels.stop_kernels()  # nothing of the job outlives it
        log.info("job %s: %s", job["id"], state.value)
        logging.getLogger().removeHandler(handler)
        handler.close()
        finish(
            store,
            job["id"],
            state,
            result,
            error,
            progress=_progress(run_dir),
            log_tail=_log_tail(run_dir),
        )
    return state


def malformed(job: dict) -> str | None:
    """Why a claimed job row cannot be run (None when it can): the worker fails it with this."""
    run_dir, parameters = job.get("run_dir"), job.get("parameters")
    if not isinstance(run_dir, str) or not run_dir.strip():
        return "malformed job: it has no run folder (run_dir); queue it again with POST /retrain"
    if not isinstance(parameters, dict):
        return f"malformed job: its parameters are not an object ({type(parameters).__name__})"
    refused = jobparams.check(parameters)
    return f"malformed job: {refused}; nothing was run" if refused else None


#: Waits between tries at recording a job's end while the database is away.
FINISH_RETRY_S = (1, 2, 4, 8, 15, 30)


def finish(store: Store, job_id: str, state: JobState, result, error, **fields) -> None:
    """Record a job's end, retrying while the database is unavailable (an outcome is never
    dropped: the model it promoted is already in the registry)."""
    for attempt in itertools.count():
        try:
            store.finish_job(job_id, state, result, error, **fields)
            return
        except UNAVAILABLE as failure:
            wait = FINISH_RETRY_S[min(attempt, len(FINISH_RETRY_S) - 1)]
            log.error(
                "job %s: recording its end failed (%s); retrying in %d s",
                job_id,
                unavailable(failure),
                wait,
            )
            time.sleep(wait)
