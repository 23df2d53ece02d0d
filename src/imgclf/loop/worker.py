"""The job worker: ``imgclf worker`` (``make worker``) claims queued jobs and runs them.

Any number of workers, on any hosts that share the database, the models, data and reports
folders, may run at once: the database hands each job to one of them, and at most one retrain
is live at a time. ``make run`` and ``make serve`` start one beside gunicorn (``WORKER=0``
leaves it out). While idle, a worker also evaluates the automatic retraining policy
(``imgclf.loop.policy``) every ``POLICY_EVERY_S`` and queues a retrain when it is due.
SIGTERM or Ctrl-C: the worker stops claiming, finishes the job it runs, exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from functools import partial

from imgclf.config import (
    PROJECT_ROOT,
    ConfigError,
    LoopSettings,
    Settings,
    get_loop_settings,
    get_settings,
)
from imgclf.loop import drift, jobs, policy
from imgclf.store import Store

log = logging.getLogger(__name__)

#: How often an idle worker evaluates the automatic retraining policy.
POLICY_EVERY_S = 5.0


def check_folders(settings: Settings) -> None:
    """A worker reads the data and writes models and reports; say which folder it cannot use.

    Raises:
        ConfigError: naming the setting (``DATA_DIR``, ``MODELS_DIR``, ``REPORTS_DIR``).
    """
    needs = (
        ("DATA_DIR", settings.data_dir, os.R_OK | os.X_OK),
        ("MODELS_DIR", settings.models_dir, os.R_OK | os.W_OK | os.X_OK),
        ("REPORTS_DIR", settings.reports_dir, os.R_OK | os.W_OK | os.X_OK),
    )
    for name, folder, mode in needs:
        if not folder.is_dir():
            raise ConfigError(f"{name}={folder}: no such folder (is the shared volume mounted?)")
        if not os.access(folder, mode):
            wanted = "read and write" if mode & os.W_OK else "read"
            raise ConfigError(
                f"{name}={folder}: this worker (uid {os.getuid()}) cannot {wanted} it"
            )


def work(
    settings: Settings,
    stop: threading.Event,
    poll_s: float = 1.0,
    once: bool = False,
    loop: LoopSettings | None = None,
) -> int:
    """Claim and run jobs until ``stop`` is set (or, with ``once``, after one job).

    Returns:
        How many jobs this worker ran.
    """
    loop = loop or get_loop_settings()
    store = Store(settings.database_url)
    references = drift.ReferenceCache(settings.data_dir, settings.models_dir)
    check_drift = partial(drift.check, references, store, loop)
    done, last_policy = 0, 0.0
    while not stop.is_set():
        job = store.claim_job(jobs.KIND, pid=os.getpid())
        if job is None:
            store.fail_dead_jobs()
            if loop.auto_retrain and time.monotonic() - last_policy >= POLICY_EVERY_S:
                last_policy = time.monotonic()
                try:
                    policy.maybe_queue(settings, loop, store, check_drift)
                except Exception:  # a policy that cannot be evaluated must not stop the worker
                    log.exception("evaluating the retraining policy failed")
                continue  # a job it queued is claimed at once
            stop.wait(poll_s)
            continue
        log.info("claimed job %s (%s)", job["id"], job.get("reason") or "no reason given")
        jobs.run_job(store, job, settings)
        done += 1
        if once:
            break
    return done


def main(once: bool = False) -> int:
    """Run a worker with the settings from the environment (the CLI's ``imgclf worker``)."""
    from dotenv import load_dotenv

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    load_dotenv(PROJECT_ROOT / ".env", override=False)  # the settings the API reads too
    settings = get_settings()
    loop = get_loop_settings()  # a policy setting out of range stops the worker here, named
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    check_folders(settings)
    stop = threading.Event()

    def request_stop(*_):
        log.info("stopping after the current job")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("worker pid %d waiting for jobs (database %s)", os.getpid(), settings.database_url)
    if loop.auto_retrain:
        log.info(
            "automatic retraining on: after %d new labelled images%s, at most every %g s",
            loop.auto_min_images,
            " or on drift" if loop.auto_on_drift else "",
            loop.auto_min_interval_s,
        )
    work(settings, stop, once=once, loop=loop)
    return 0
