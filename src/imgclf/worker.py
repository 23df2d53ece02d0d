"""The job worker: ``imgclf worker`` (``make worker``) claims queued jobs and runs them.

Any number of workers, on any hosts that share the database, the models, data and reports
folders, may run at once: the database hands each job to one of them, and at most one retrain
is live at a time. ``make run`` and ``make serve`` start one beside gunicorn (``WORKER=0``
leaves it out). SIGTERM or Ctrl-C: the worker stops claiming, finishes the job it runs, exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from imgclf import jobs
from imgclf.config import ConfigError, Settings, get_settings
from imgclf.store import Store

log = logging.getLogger(__name__)


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
    settings: Settings, stop: threading.Event, poll_s: float = 1.0, once: bool = False
) -> int:
    """Claim and run jobs until ``stop`` is set (or, with ``once``, after one job).

    Returns:
        How many jobs this worker ran.
    """
    store = Store(settings.database_url)
    done = 0
    while not stop.is_set():
        job = store.claim_job(jobs.KIND, pid=os.getpid())
        if job is None:
            store.fail_dead_jobs()
            stop.wait(poll_s)
            continue
        log.info("claimed job %s", job["id"])
        jobs.run_job(store, job, settings)
        done += 1
        if once:
            break
    return done


def main(once: bool = False) -> int:
    """Run a worker with the settings from the environment (the CLI's ``imgclf worker``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
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
    work(settings, stop, once=once)
    return 0
