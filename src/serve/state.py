"""What one gunicorn worker holds: settings, the database, the live model, small caches.

Built by ``create_app`` in the worker (after the fork) and kept in
``app.extensions["imgclf"]``; handlers reach it through ``current()``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import current_app
from flask_smorest import abort

from imgclf import config
from imgclf.data import uploads
from imgclf.loop import drift
from imgclf.loop.retention import ImageKeeper
from imgclf.model import registry
from imgclf.model.prediction import LiveModel, Predictor
from imgclf.store import PredictionLogWriter, Store
from imgclf.store.migrations import DatabaseUnreachable
from serve import metrics
from serve.batching import MicroBatcher
from serve.schemas import EXPLAIN_MAX_BATCH

EXTENSION = "imgclf"
#: How long a drift report is reused by ``/metrics`` scrapes and ``/policy``.
DRIFT_CACHE_S = 15.0
#: How often /health asks the database itself (the log writer reports on every write).
PING_EVERY_S = 2.0
#: How long a starting worker waits for a database that does not answer yet (a container
#: network whose DNS is being reconfigured, a server that is restarting) before it gives up.
START_PATIENCE_S = 20.0


def _open_store(database_url: str) -> Store:
    deadline = time.monotonic() + START_PATIENCE_S
    while True:
        try:
            return Store(database_url)
        except DatabaseUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class WorkerState:
    """Settings, the store and its background log writer, the live model, upload hashes."""

    def __init__(
        self,
        settings: config.Settings,
        service: config.ServiceSettings,
        loop: config.LoopSettings | None = None,
    ):
        self.settings = settings
        self.service = service
        self.loop = loop or config.get_loop_settings()
        self.store = _open_store(settings.database_url)
        self.log = PredictionLogWriter(
            self.store,
            settings.prediction_journal_dir,
            keep_s=self.loop.retain_hours * 3600 or None,  # the log is kept as long as images
        )
        self.runtime = config.get_runtime_settings()
        #: Micro-batching of this worker's predictions (None: off, ``BATCH_MAX_SIZE=1``).
        self.batcher = (
            MicroBatcher(self.runtime.batch_max_size, self.runtime.batch_max_wait_ms)
            if self.runtime.batching
            else None
        )
        server = config.get_server_settings()
        #: under gunicorn: this worker's mark that it serves at full speed (``readiness``)
        self.ready_mark = ready_mark(server.metrics_dir, os.getpid())
        self.workers = server.workers
        #: (runtime, version) this worker counts under in metrics.WORKERS_SERVING
        self._serving: tuple[str, str] | None = None
        self.model = LiveModel(
            settings.models_dir,
            service.reload_poll_s,
            self.runtime.batch_max_size,
            largest=service.max_batch,
            explain_max=EXPLAIN_MAX_BATCH,
            on_loaded=self._loaded,
        )  # a version is compiled for every request it can get before it serves
        self.hashes = uploads.HashIndex(settings.data_dir)
        self.keeper = ImageKeeper(
            settings.data_dir / "retained",
            self.loop.retain_images,
            self.loop.retain_hours * 3600,
            int(self.loop.retain_max_mb * 1024 * 1024),
        )
        self.started_at = service.started_at
        self.references = drift.ReferenceCache(settings.data_dir, settings.models_dir)
        self._drift: tuple[float, dict] | None = None
        self._pinged: tuple[float, str | None] = (0.0, None)
        self.collector = metrics.ServiceCollector(self)

    def drift(self, fresh: bool = False) -> dict:
        """The drift report (``imgclf.loop.drift``), at most ``DRIFT_CACHE_S`` old unless
        ``fresh``."""
        if fresh or not self._drift or time.time() - self._drift[0] > DRIFT_CACHE_S:
            self._drift = (time.time(), drift.check(self.references, self.store, self.loop))
        return self._drift[1]

    def database_status(self) -> dict:
        """For /health: the database's state, asked at most every ``PING_EVERY_S``."""
        if time.monotonic() - self._pinged[0] > PING_EVERY_S:
            self._pinged = (time.monotonic(), self.store.ping())
        writer = self.log.status()
        error = self._pinged[1] or writer["last_error"]
        return {
            "database": "down" if error else "ok",
            "database_error": error,
            "journal_rows": writer["journal_rows"],
        }

    def _loaded(self, predictor: Predictor) -> None:
        self._serving = metrics.serving(self._serving, (predictor.runtime, predictor.version))
        if self.ready_mark is not None:
            self.ready_mark.touch()

    def readiness(self) -> tuple[bool, str]:
        """For /ready: ``(ready, why)``. Ready once this worker and, under gunicorn, every
        worker of the server has its model loaded and every path compiled; with no model at
        all, ready too (every other endpoint answers, /predict a 503 at once)."""
        if self.model.loaded is None:
            if registry.current_version(self.settings.models_dir) is None:
                return True, "no-model"
            return False, "this worker is loading and compiling the model"
        if self.ready_mark is not None:
            serving = ready_workers(self.ready_mark.parent)
            if serving < self.workers:
                return (
                    False,
                    f"{serving} of {self.workers} workers serve the model; the others load it",
                )
        return True, "ok"

    def predictor(self) -> Predictor:
        """The predictor to use now; answers 503 when no model can be served."""
        self.model.start()
        predictor = self.model.predictor
        if predictor is None:
            abort(
                503,
                message=self.model.last_error
                or "no model has been trained yet: run `make train` (or `make run`)",
            )
        return predictor


#: A worker's ready mark in the server's shared folder (prometheus_client's, which reads only
#: ``*.db`` there): ``ready-<pid>.flag``; ``serve.gunicorn_conf`` removes a dead worker's.
READY_MARK = "ready-{pid}.flag"


def ready_mark(folder: str | None, pid: int) -> Path | None:
    return Path(folder) / READY_MARK.format(pid=pid) if folder else None


def ready_workers(folder: Path) -> int:
    """The workers of this server whose mark is there and whose process is alive."""
    count = 0
    for mark in folder.glob(READY_MARK.format(pid="*")):
        try:
            os.kill(int(mark.name.split("-")[1].split(".")[0]), 0)
        except (ValueError, ProcessLookupError):
            continue
        except PermissionError:  # alive, another user's
            pass
        count += 1
    return count


def current() -> WorkerState:
    """This worker's state (inside a request)."""
    return current_app.extensions[EXTENSION]
