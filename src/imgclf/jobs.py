"""Retrain jobs: the retrain notebook run by papermill in its own process, never in a web worker.

``start_retrain`` (called by the API) queues a job in the database (refused while another one is
live) and starts ``python -m imgclf.jobs run <id>`` in a new session, so that the job neither
blocks nor dies with the worker that started it. The job process writes a heartbeat while it
runs; a live job without a recent heartbeat, or whose process is gone, is marked failed by the
store. Progress (stage, epoch) comes from the notebook's ``summary.json``; the log tail from
``job.log`` in the run's report folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from imgclf import pipeline, runs
from imgclf.config import Settings, get_settings
from imgclf.promotion import Outcome
from imgclf.store import FINAL_STATES, JobState, Store

KIND = "retrain"
HEARTBEAT_S = 5.0
#: Tries at starting the notebook's kernel (jupyter_client can lose a port race).
KERNEL_START_TRIES = 3


def start_retrain(store: Store, settings: Settings, parameters: dict) -> dict:
    """Queue a retrain job and start its process; returns the job.

    Raises:
        store.JobConflict: a retrain job is already queued or running.
    """
    run_dir = runs.new_run_dir(settings.reports_dir, KIND)
    try:
        job = store.create_job(KIND, parameters, str(run_dir))
    except Exception:
        run_dir.rmdir()
        raise
    with open(run_dir / runs.LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgclf.jobs", "run", job["id"]],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **settings.as_environment(), "PYTHONUNBUFFERED": "1"},
        )
    store.update_job(job["id"], pid=process.pid)
    # reap the child when it ends, so that it never lingers as a zombie of this worker
    threading.Thread(target=process.wait, daemon=True).start()
    return store.job(job["id"])


def describe(job: dict, log_lines: int = 30) -> dict:
    """A job with its live progress (from the notebook's summary) and the log's last lines."""
    run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
    summary = runs.read_summary(run_dir) if run_dir and run_dir.is_dir() else {}
    log_tail: list[str] = []
    if run_dir and (run_dir / runs.LOG_FILE).is_file():
        with open(run_dir / runs.LOG_FILE, errors="replace") as log:
            log_tail = [line.rstrip("\n") for line in deque(log, maxlen=log_lines)]
    epoch, epochs = summary.get("epoch"), summary.get("epochs")
    progress = {
        "stage": summary.get("stage", job["state"]),
        "epoch": epoch,
        "epochs": epochs,
        "fraction": _fraction(job["state"], summary.get("stage"), epoch, epochs),
    }
    report = f"{run_dir.name}/{runs.REPORT_FILE}" if run_dir else None
    has_report = bool(run_dir and (run_dir / runs.REPORT_FILE).is_file())
    return {
        **job,
        "progress": progress,
        "log_tail": log_tail,
        "report": f"/reports/{report}" if has_report else None,
        "summary": summary,
    }


STAGES = {"loading data": 0.05, "fine-tuning": 0.1, "evaluating": 0.9, "done": 0.97}


def _fraction(state: str, stage: str | None, epoch: int | None, epochs: int | None) -> float:
    if state in FINAL_STATES:
        return 1.0
    if stage == "fine-tuning" and epoch and epochs:
        return round(0.1 + 0.8 * epoch / epochs, 3)
    return STAGES.get(stage or "", 0.0)


def _heartbeat(store: Store, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        store.update_job(job_id, heartbeat_at=time.time())


def run_job(job_id: str, settings: Settings | None = None) -> JobState:
    """Run a queued job to its end in this process; returns its final state."""
    settings = settings or get_settings()
    store = Store(settings.database_url)
    job = store.job(job_id)
    if job is None or job["state"] != JobState.QUEUED:
        raise SystemExit(f"job {job_id}: not found or not queued")
    store.update_job(job_id, state=JobState.RUNNING, started_at=time.time(), pid=os.getpid())
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True).start()
    state, result, error = JobState.FAILED, {}, None
    try:
        for attempt in range(1, KERNEL_START_TRIES + 1):
            try:
                run = pipeline.run_notebook(
                    KIND, job["parameters"], settings, Path(job["run_dir"]), log_output=True
                )
                break
            except pipeline.PipelineError:
                raise
            except Exception as failure:  # kernel start (ports, timeouts): try again
                if attempt == KERNEL_START_TRIES:
                    raise
                logging.warning("kernel start failed (%s); retrying", failure)
                time.sleep(attempt)
        result = run.summary
        try:
            state = Outcome.from_dict(result.get("outcome")).state
        except ValueError:
            raise RuntimeError("the retrain notebook ended without recording an outcome") from None
    except Exception as failure:
        error = str(failure)
        result = runs.read_summary(Path(job["run_dir"]))
        logging.exception("retrain job %s failed", job_id)
    finally:
        stop.set()
        store.finish_job(job_id, state, result, error)
    logging.info("retrain job %s: %s", job_id, state)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclf.jobs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run a queued job").add_argument("job_id")
    commands.add_parser("list", help="list the latest jobs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "run":
        return 0 if run_job(args.job_id) != JobState.FAILED else 1
    for job in Store(get_settings().database_url).jobs():
        print(f"{job['id']}  {job['state']:9s}  {job['parameters']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
