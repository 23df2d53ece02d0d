"""Writes prediction records to the log in groups, off the request path, and never drops one:
rows the database cannot take wait in a write-ahead journal (``imgclf.store.journal``)."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from pathlib import Path

from imgclf.store.journal import Journal
from imgclf.store.predictions import PREDICTION_COLUMNS, PredictionLog

log = logging.getLogger(__name__)


class PredictionLogWriter:
    """Writes prediction records in groups from a background thread, off the request path, and
    never drops one (``imgclf.store.journal``).

    ``add`` appends the rows to the journal (one ``write``) and to an in-memory queue; every
    ``interval_s`` the thread inserts what has queued in one transaction and deletes the group's
    journal segment. When the database cannot take them, the segment is kept (``fsync``-ed),
    the rows leave memory, and inserts are retried with a backoff (``interval_s`` doubling up
    to ``retry_max_s``): the kept segments are replayed, oldest first, before anything newer.
    Segments left by a process that died are adopted and replayed too. Without a journal folder
    the rows wait in memory instead (at most ``max_pending``; beyond that the oldest are
    dropped and counted). ``flush`` writes now (at shutdown, or before a lookup that must see
    every record).
    """

    #: How often segments of processes that are gone are looked for.
    ADOPT_EVERY_S = 30.0

    def __init__(
        self,
        store: PredictionLog,
        journal_dir: Path | None = None,
        interval_s: float = 0.2,
        retry_max_s: float = 5.0,
        max_pending: int = 100_000,
        keep_s: float | None = None,
    ):
        self.store = store
        self.interval_s, self.retry_max_s, self.max_pending = interval_s, retry_max_s, max_pending
        self.journal = Journal(journal_dir) if journal_dir else None
        self._pending: list[dict] = []
        self._journal_ok = True  # every pending row is also in the open segment
        self._kept: list[tuple[Path, int]] = []  # own segments the database has not taken
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = interval_s
        self._adopt_at = 0.0
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.dropped = 0
        self.replayed = 0
        self.keep_s = keep_s  # predictions older than this are pruned (None: kept)
        self._prune_at = 0.0

    def add(self, rows: list[dict]) -> None:
        rows = [{name: _plain(row.get(name)) for name in PREDICTION_COLUMNS} for row in rows]
        with self._lock:
            self._pending.extend(rows)
            if self.journal is not None:
                try:
                    self.journal.append(rows)
                except OSError as error:  # a full disk: these rows are in memory only
                    if self._journal_ok:
                        log.error("the prediction journal cannot be written: %s", error)
                    self._journal_ok = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def status(self) -> dict:
        """For /health: is the database taking rows, and how many wait in the journal."""
        return {
            "database": "down" if self.down_since is not None else "ok",
            "down_for_s": round(time.time() - self.down_since, 1) if self.down_since else None,
            "journal_rows": sum(count for _, count in self._kept),
            "replayed_rows": self.replayed,
            "dropped_rows": self.dropped,
            "last_error": self.last_error,
        }

    def flush(self, force: bool = True) -> None:
        """Write what has queued; when it returns and the database is up, every row added
        before the call is stored (otherwise it is in a kept journal segment).

        Request threads only ever wait for the short swap under ``_lock``, never for the
        database: the insert runs under ``_write_lock``, which only flushes share. ``force``
        ignores the backoff (a caller that needs the rows now).
        """
        with self._write_lock:
            with self._lock:
                rows, self._pending = self._pending, []
                segment = self.journal.seal() if self.journal else None
                journaled, self._journal_ok = self._journal_ok and segment is not None, True
            if not force and self.down_since is not None and time.monotonic() < self._retry_at:
                self._keep(rows, segment, journaled)
                return
            try:
                self._replay_kept()
                if rows:
                    self.store.log_predictions(rows)
            except Exception as error:  # away, locked, full: keep everything, retry later
                self._keep(rows, segment, journaled)
                self._down(error)
                return
            if segment is not None:
                segment.unlink(missing_ok=True)
            self._up()
            self._adopt_orphans()
            self._prune()

    #: How often a writer prunes predictions older than ``keep_s``.
    PRUNE_EVERY_S = 600.0

    def _prune(self) -> None:
        if not self.keep_s or time.monotonic() < self._prune_at:
            return
        self._prune_at = time.monotonic() + self.PRUNE_EVERY_S
        try:
            deleted = self.store.prune(time.time() - self.keep_s)
        except Exception as error:  # the next round tries again
            log.warning("pruning old predictions failed: %s", error)
            return
        if deleted:
            log.info("pruned %d predictions older than %.0f h", deleted, self.keep_s / 3600)

    def _keep(self, rows: list[dict], segment: Path | None, journaled: bool) -> None:
        if segment is not None and journaled and rows:
            try:
                Journal.sync(segment)
                self._kept.append((segment, len(rows)))
                return
            except OSError as error:
                log.error("the prediction journal cannot be synced: %s", error)
        with self._lock:  # no journal (or it failed): the rows wait in memory, bounded
            self._pending[:0] = rows
            excess = len(self._pending) - self.max_pending
            if excess > 0:
                del self._pending[:excess]
                self.dropped += excess
                log.error("prediction log: dropped the %d oldest rows (memory bound)", excess)

    def _replay_kept(self) -> None:
        while self._kept:
            segment, count = self._kept[0]
            self.replayed += self.journal.replay([segment], self._insert_once)
            self._kept.pop(0)

    def _insert_once(self, rows: list[dict]) -> None:
        self.store.log_predictions(rows, ignore_duplicates=True)

    def _adopt_orphans(self) -> None:
        if self.journal is None or time.monotonic() < self._adopt_at:
            return
        self._adopt_at = time.monotonic() + self.ADOPT_EVERY_S
        for instance, descriptor in self.journal.orphans():
            try:
                replayed = self.journal.replay(self.journal.segments(instance), self._insert_once)
            except Exception as error:
                os.close(descriptor)  # its lock is free again: adopted later
                self._down(error)
                return
            self.journal.release(instance, descriptor)
            self.replayed += replayed
            if replayed:
                log.warning("prediction log: replayed %d rows left by %s", replayed, instance)

    def _down(self, error: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            log.error("prediction log: the database does not take rows (%s); journaling", error)
        else:
            self._backoff = min(self._backoff * 2, self.retry_max_s)
        self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        self._retry_at = time.monotonic() + self._backoff

    def _up(self) -> None:
        if self.down_since is not None:
            log.warning(
                "prediction log: the database is back after %.1f s; %d journaled rows replayed",
                time.time() - self.down_since,
                self.replayed,
            )
        self.down_since, self._backoff, self.last_error = None, self.interval_s, None

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            try:
                self.flush(force=False)
            except Exception:  # never let the writer thread die
                log.exception("writing the prediction log failed")

    def close(self) -> None:
        """Flush at exit; what the database does not take stays in the journal for the next
        process to replay."""
        try:
            self.flush()
        finally:
            if self.journal is not None:
                self.journal.close()


def _plain(value):
    """A value JSON and every database driver take (NumPy scalars as Python ones)."""
    return value.item() if hasattr(value, "item") else value
