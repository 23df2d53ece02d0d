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
A kernel that dies on its own fails the job and says so (out of memory when the kernel's
cgroup counted an OOM kill, or a cell raised ``MemoryError`` or XLA's ``RESOURCE_EXHAUSTED``).
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
#: How often a running job's worker looks for a cancel request.
CANCEL_POLL_S = 1.0
#: Where the cgroup file systems are mounted (OOM kills are counted there).
CGROUP_ROOT = Path("/sys/fs/cgroup")
LOG_LINES = 30
#: Tries at starting the notebook's kernel (jupyter_client can lose a port race).
KERNEL_START_TRIES = 3
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


def kernel_processes() -> list:
    """This process's notebook kernels (``ipykernel`` children, at any depth)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("ipykernel" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # it exited while we looked
            continue
    return found


def stop_kernels() -> int:
    """Kill this process's notebook kernels and their children (e.g. decoding processes) and
    wait for them to go; returns how many kernels there were."""
    import psutil

    kernels = kernel_processes()
    doomed = list(kernels)
    for kernel in kernels:
        try:
            doomed.extend(kernel.children(recursive=True))
        except psutil.Error:
            pass
    for process in doomed:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(doomed, timeout=5)
    return len(kernels)


def oom_kills() -> int | None:
    """OOM kills counted in this process's memory cgroup (its kernels run in it too), from
    cgroup v2's ``memory.events`` or v1's ``memory.oom_control``; None where unreadable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(CGROUP_ROOT / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.oom_control")
    for events in candidates:
        try:
            for line in events.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


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
                        heartbeat_at=time.time(),
                        progress=_progress(self.run_dir),
                        log_tail=_log_tail(self.run_dir),
                    )
            except Exception:  # the database is away for a moment: the next round tries again
                log.exception("watching job %s failed", self.job_id)

    def cancel(self) -> None:
        self.cancelled_at = time.time()
        self.cancelled.set()
        log.warning("job %s: cancel requested; stopping its kernel", self.job_id)
        stopped = stop_kernels()
        log.warning("job %s: stopped %d kernel(s)", self.job_id, stopped)


def _run_notebook(job: dict, settings: Settings, cancelled: threading.Event) -> pipeline.RunResult:
    """Run the retrain notebook; retries only a kernel that failed to start (and was not
    stopped by a cancel request)."""
    from nbclient.exceptions import DeadKernelError

    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            return pipeline.run_notebook(
                KIND, job["parameters"], settings, Path(job["run_dir"]), log_output=True
            )
        except (pipeline.PipelineError, DeadKernelError):
            raise
        except Exception as failure:  # the kernel did not start (ports, timeouts)
            if cancelled.is_set():
                raise
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
    watcher = Watcher(store, job["id"], run_dir)
    watcher.start()
    state, result, error = JobState.FAILED, {}, None
    started, oom_before = time.time(), oom_kills()
    try:
        log.info("job %s: running the retrain notebook (worker pid %d)", job["id"], os.getpid())
        result = _run_notebook(job, settings, watcher.cancelled).summary
        state = _outcome_state(result)
    except Exception as failure:
        result = runs.read_summary(run_dir)
        if watcher.cancelled.is_set():
            state = JobState.CANCELLED
            stage = result.get("stage", "starting")
            error = f"cancelled by request after {watcher.cancelled_at - started:.0f} s ({stage})"
        else:
            error = explain(failure, oom_before, oom_kills())
            log.error("job %s failed: %s", job["id"], error)
    finally:
        watcher.stop.set()
        watcher.join(timeout=HEARTBEAT_S + 1)
        stop_kernels()  # nothing of the job outlives it
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


OUT_OF_MEMORY = ("MemoryError", "RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def explain(
    failure: Exception, oom_before: int | None = None, oom_after: int | None = None
) -> str:
    """Why a job failed, in words: out of memory, a kernel that died, or the cell's error."""
    from nbclient.exceptions import DeadKernelError

    text = str(failure)
    if isinstance(failure, DeadKernelError):
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            return (
                "out of memory: the system killed the notebook's kernel (OOM kill) while it ran; "
                "use smaller batches or images, or give the worker more memory"
            )
        return f"the notebook's kernel died while running (killed, or out of memory): {text}"
    if any(marker in text for marker in OUT_OF_MEMORY):
        return (
            f"out of memory: the retrain could not allocate what it needed ({text}); use "
            "smaller batches or images, or give the worker more memory"
        )
    return text
