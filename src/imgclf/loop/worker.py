"""The job worker: ``imgclf worker`` (``make worker``) claims queued jobs and runs them.

Any number of workers, on any hosts that share the database, the models, data and reports
folders, may run at once: the database hands each job to one of them, and at most one retrain
is live at a time. Retrains come first; a scan of the data (``imgclf.loop.scan``, ``POST
/data/issues/scan``) runs when no retrain is queued. ``make run`` and ``make serve`` start one
beside gunicorn (``WORKER=0`` leaves it out). While idle, a worker also evaluates the automatic
retraining policy (``imgclf.loop.policy``) every ``POLICY_EVERY_S`` and queues a retrain when it
is due.
SIGTERM or Ctrl-C: the worker stops claiming, finishes the job it runs, exits.
"""

from __future__ import annotations

import ctypes
import gc
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
    get_server_settings,
    get_settings,
)
from imgclf.loop import drift, featuredrift, jobs, policy, scan
from imgclf.store import UNAVAILABLE, JobState, Store, describe_url, unavailable
from imgclf.store.migrations import DatabaseUnreachable

log = logging.getLogger(__name__)

#: How often an idle worker evaluates the automatic retraining policy.
POLICY_EVERY_S = 5.0
#: How often an idle worker checks ``models/current.json`` against the database's pointer
#: (and rewrites it if a process died between changing the pointer and writing the mirror).
POINTER_SYNC_S = 10.0


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
    store = _open_store(settings, stop)
    if store is None:
        return 0
    references = drift.ReferenceCache(settings.data_dir, settings.models_dir)
    check_drift = partial(drift.check, references, store, loop)
    done, last_policy, last_sync, backoff = 0, 0.0, 0.0, Backoff(poll_s)
    while not stop.is_set():
        try:
            job = store.claim_job(jobs.KIND, pid=os.getpid()) or store.claim_job(
                scan.KIND, pid=os.getpid()
            )
            if job is None:
                store.fail_dead_jobs()
            if job is None and time.monotonic() - last_sync >= POINTER_SYNC_S:
                last_sync = time.monotonic()  # a promotion whose mirror write was cut short
                store.model_pointer(settings.models_dir)
        except UNAVAILABLE as error:  # the database is away: wait for it, never exit
            backoff.wait(
                stop, f"claiming a job: the database is unavailable ({unavailable(error)})"
            )
            continue
        backoff.reset()
        if job is None:
            if loop.auto_retrain and time.monotonic() - last_policy >= POLICY_EVERY_S:
                last_policy = time.monotonic()
                try:
                    if loop.auto_on_drift:  # the test on the model's features, when stale
                        featuredrift.refresh_in_child(settings)
                    policy.maybe_queue(settings, loop, store, check_drift)
                except Exception:  # a policy that cannot be evaluated must not stop the worker
                    log.exception("evaluating the retraining policy failed")
                continue  # a job it queued is claimed at once
            stop.wait(poll_s)
            continue
        log.info("claimed job %s (%s)", job["id"], job.get("reason") or "no reason given")
        _run(store, job, settings)
        release_memory()
        done += 1
        if once:
            break
    return done


class Backoff:
    """Waits that double from ``first_s`` to ``most_s`` while something keeps failing."""

    def __init__(self, first_s: float = 1.0, most_s: float = 30.0):
        self.first_s, self.most_s, self.next_s = first_s, most_s, first_s

    def wait(self, stop: threading.Event, what: str) -> None:
        log.error("%s; trying again in %.0f s", what, self.next_s)
        stop.wait(self.next_s)
        self.next_s = min(self.next_s * 2, self.most_s)

    def reset(self) -> None:
        self.next_s = self.first_s


def _open_store(settings: Settings, stop: threading.Event) -> Store | None:
    """The store, once the database answers (None if stopped while waiting for it)."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            return Store(settings.database_url)
        except DatabaseUnreachable as error:
            backoff.wait(stop, str(error))
    return None


def release_memory() -> None:
    """Give back to the system the heap a finished job freed: glibc's malloc keeps it, and the
    idle worker would hold it (``make bench-retrain``: 7 MB of a retrain's 40). Nothing where
    the C library has no ``malloc_trim`` (musl, macOS)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _run(store: Store, job: dict, settings: Settings) -> None:
    """Run a claimed job; a malformed row or an unexpected error fails that job, never the
    worker."""
    problem = jobs.malformed(job)
    try:
        if problem is None:
            (scan.run_job if job.get("kind") == scan.KIND else jobs.run_job)(store, job, settings)
            return
    except Exception as error:
        log.exception("job %s could not be run", job.get("id"))
        problem = f"the worker could not run this job: {type(error).__name__}: {error}"
    log.error("job %s failed: %s", job.get("id"), problem)
    jobs.finish(store, job["id"], JobState.FAILED, {}, problem)


def main(once: bool = False) -> int:
    """Run a worker with the settings from the environment (the CLI's ``imgclf worker``)."""
    from dotenv import load_dotenv

    load_dotenv(PROJECT_ROOT / ".env", override=False)  # the settings the API reads too
    level = get_server_settings().log_level.upper()  # LOG_LEVEL, as gunicorn's
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")
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
    where = describe_url(settings.database_url)  # never the password
    log.info("worker pid %d waiting for jobs (database %s)", os.getpid(), where)
    if loop.auto_retrain:
        log.info(
            "automatic retraining on: after %d new labelled images%s, at most every %g s",
            loop.auto_min_images,
            " or on drift" if loop.auto_on_drift else "",
            loop.auto_min_interval_s,
        )
    work(settings, stop, once=once, loop=loop)
    return 0
