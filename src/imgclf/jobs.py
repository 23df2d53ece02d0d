"""Retrain jobs: queued by the API, run by a worker (``imgclf worker``), followed in the database.

The API only queues (``queue_retrain``); a worker on any host claims the job and runs the
retrain notebook with papermill in its own process (``run_job``). While it runs, a heartbeat
thread writes the heartbeat, the progress (from the notebook's ``summary.json``) and the tail
of the job's log into the database every few seconds, so that ``GET /retrain/<id>`` shows them
whichever host runs the job. The outcome (promoted or rejected, with the gate's figures) is
read from the notebook's summary as a typed ``promotion.Outcome``. A worker killed mid-job
takes its kernel with it (a kernel exits when its parent dies); its job is failed by the store
once the heartbeat is older than ``store.HEARTBEAT_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from imgclf import pipeline, runs
from imgclf.config import Settings
from imgclf.store import FINAL_STATES, JobConflict, JobState, Store

KIND = "retrain"
HEARTBEAT_S = 5.0
LOG_LINES = 30
#: Tries at starting the notebook's kernel (jupyter_client can lose a port race).
KERNEL_START_TRIES = 3
STAGES = {"queued": 0.0, "starting": 0.02, "loading data": 0.05, "fine-tuning": 0.1}
STAGES.update({"evaluating": 0.9, "done": 0.97})

log = logging.getLogger(__name__)


def queue_retrain(store: Store, settings: Settings, parameters: dict) -> dict:
    """Queue a retrain job for a worker; returns the job.

    Raises:
        store.JobConflict: a retrain job is already queued or running.
    """
    run_dir = runs.new_run_dir(settings.reports_dir, KIND)
    try:
        return store.create_job(KIND, parameters, str(run_dir))
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


def _heartbeat(store: Store, job_id: str, run_dir: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            store.update_job(
                job_id,
                heartbeat_at=time.time(),
                progress=_progress(run_dir),
                log_tail=_log_tail(run_dir),
            )
        except Exception:  # the database is away for a moment: the next beat tries again
            log.exception("heartbeat of job %s failed", job_id)


def _run_notebook(job: dict, settings: Settings) -> pipeline.RunResult:
    """Run the retrain notebook; retries only a kernel that failed to start."""
    from nbclient.exceptions import DeadKernelError

    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            return pipeline.run_notebook(
                KIND, job["parameters"], settings, Path(job["run_dir"]), log_output=True
            )
        except (pipeline.PipelineError, DeadKernelError):
            raise
        except Exception as failure:  # the kernel did not start (ports, timeouts)
            if attempt == KERNEL_START_TRIES:
                raise RuntimeError(f"the notebook's kernel did not start: {failure}") from None
            log.warning("kernel start failed (%s); retrying", failure)
            time.sleep(attempt)
    raise AssertionError("unreachable")


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
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job["id"], run_dir, stop), daemon=True)
    beat.start()
    state, result, error = JobState.FAILED, {}, None
    try:
        log.info("job %s: running the retrain notebook (worker pid %d)", job["id"], os.getpid())
        result = _run_notebook(job, settings).summary
        state = _outcome_state(result)
    except Exception as failure:
        error = _explain(failure)
        result = runs.read_summary(run_dir)
        log.error("job %s failed: %s", job["id"], error)
    finally:
        stop.set()
        beat.join(timeout=HEARTBEAT_S + 1)
        log.info("job %s: %s", job["id"], state.value)
        logging.getLogger().removeHandler(handler)
        handler.close()
        store.finish_job(
            job["id"],
            state,
            result,
            error,
            progress=_progress(run_dir),
            log_tail=_log_tail(run_dir),
        )
    return state


def _outcome_state(summary: dict) -> JobState:
    from imgclf.promotion import Outcome  # imports Keras: only once a job has run

    try:
        return Outcome.from_dict(summary.get("outcome")).state
    except ValueError:
        raise RuntimeError("the retrain notebook ended without recording an outcome") from None


def _explain(failure: Exception) -> str:
    from nbclient.exceptions import DeadKernelError

    if isinstance(failure, DeadKernelError):
        return f"the notebook's kernel died while running (out of memory, or killed): {failure}"
    return str(failure)
