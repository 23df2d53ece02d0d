"""The prediction log and feedback: written in batches off the request path, read for the
statistics, the drift monitor and the review queue."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from imgclf.store.base import Connected, FeedbackExists, StoreError
from imgclf.store.database import feedback, predictions
from imgclf.store.journal import Journal

log = logging.getLogger(__name__)

#: /stats reads at most this many of the latest predictions (and feedbacks).
STATS_ROWS = 10_000

_PREDICTION_COLUMNS = [column.name for column in predictions.columns]


class PredictionLog(Connected):
    """Predictions and the true labels people gave them."""

    def log_predictions(self, rows: list[dict], ignore_duplicates: bool = False) -> None:
        """Insert prediction records (keys: the ``predictions`` columns; ``id`` required).

        ``ignore_duplicates``: a row whose id is stored already is skipped (a journal replayed
        twice stores each row once)."""
        if not rows:
            return
        values = [{column: row.get(column) for column in _PREDICTION_COLUMNS} for row in rows]
        with self._transaction() as connection:
            if ignore_duplicates:  # in chunks: SQLite bounds a statement's parameters
                for start in range(0, len(values), 500):
                    connection.execute(_insert_ignoring(connection, values[start : start + 500]))
            else:
                connection.execute(predictions.insert(), values)

    def prediction(self, prediction_id: str) -> dict | None:
        with self._read() as connection:
            row = connection.execute(
                predictions.select().where(predictions.c.id == prediction_id)
            ).first()
        return dict(row._mapping) if row else None

    def add_feedback(self, prediction_id: str, true_label: str, trusted: bool = False) -> dict:
        """Store the true label of a logged prediction, once: a second label is refused
        unless it is ``trusted`` (the admin's correction replaces the first).

        Raises:
            StoreError: no prediction with this id (or it failed, so there is no label).
            FeedbackExists: the prediction has feedback already (and this is not trusted).
        """
        with self._transaction() as connection:
            label = connection.execute(
                sa.select(predictions.c.label).where(predictions.c.id == prediction_id)
            ).scalar()
            if label is None:
                raise StoreError(f"no prediction with id {prediction_id!r}")
            existing = connection.execute(
                sa.select(feedback.c.id, feedback.c.true_label)
                .where(feedback.c.prediction_id == prediction_id)
                .with_for_update()
            ).first()
            now = time.time()
            row = {"prediction_id": prediction_id, "true_label": true_label, "created_at": now}
            if existing is not None and not trusted:
                raise FeedbackExists(
                    f"prediction {prediction_id!r} has feedback already ({existing.true_label!r});"
                    " only the admin token can correct it"
                )
            if existing is not None:
                connection.execute(
                    feedback.update()
                    .where(feedback.c.id == existing.id)
                    .values(**row, trusted=True)
                )
                stored = existing.id
            else:
                values = {**row, "trusted": trusted}
                stored = connection.execute(
                    feedback.insert().values(**values)
                ).inserted_primary_key[0]
        return {
            "id": stored,
            **row,
            "trusted": trusted,
            "predicted_label": label,
            "correct": label == true_label,
        }

    def recent_inputs(self, limit: int = 500) -> list[dict]:
        """Return the image statistics of the latest successful predictions, newest first."""
        columns = (
            "created_at",
            "model_version",
            "label",
            "confidence",
            "brightness",
            "contrast",
            "width",
            "height",
            "client",
        )
        query = (
            sa.select(*(predictions.c[name] for name in columns))
            .where(predictions.c.error.is_(None))
            .order_by(predictions.c.created_at.desc())
            .limit(limit)
        )
        with self._read() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def least_confident(self, since: float, limit: int = 20) -> list[dict]:
        """Successful predictions since ``since`` without feedback, least confident first."""
        p = predictions
        reviewed = sa.select(feedback.c.prediction_id)
        query = (
            sa.select(p)
            .where(p.c.error.is_(None), p.c.created_at >= since, p.c.id.not_in(reviewed))
            .order_by(p.c.confidence, p.c.created_at.desc())
            .limit(limit)
        )
        with self._read() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def statistics(
        self, window_s: float = 3600.0, bucket_s: float = 60.0, rows: int = STATS_ROWS
    ) -> dict:
        """Production figures over the latest ``rows`` predictions (read newest first by the
        time index, so the cost does not grow with the table): counts, per-class counts,
        latency percentiles, error rate, a per-minute series over the last ``window_s``
        seconds of them, and the accuracy of the latest ``rows`` feedbacks."""
        now, p, f = time.time(), predictions, feedback
        with self._read() as connection:
            latest = connection.execute(
                sa.select(p.c.created_at, p.c.label, p.c.latency_ms, p.c.error)
                .order_by(p.c.created_at.desc())
                .limit(rows)
            ).all()
            recent = sa.select(f.c.prediction_id, f.c.true_label, f.c.trusted)
            recent = recent.order_by(f.c.id.desc()).limit(rows).subquery()
            correct = sa.case((p.c.label == recent.c.true_label, 1), else_=0)
            trusted = sa.case((recent.c.trusted, 1), else_=0)
            trusted_correct = sa.case(
                (recent.c.trusted & (p.c.label == recent.c.true_label), 1), else_=0
            )
            feedback_total, feedback_correct, trusted_total, trusted_right = connection.execute(
                sa.select(
                    sa.func.count(), sa.func.sum(correct), sa.func.sum(trusted),
                    sa.func.sum(trusted_correct),
                ).select_from(recent.join(p, p.c.id == recent.c.prediction_id))
            ).one()  # fmt: skip
            trusted_total = trusted_total or 0
        errors = sum(row.error is not None for row in latest)
        by_class: dict[str, int] = {}
        for row in latest:
            if row.error is None:
                by_class[row.label] = by_class.get(row.label, 0) + 1
        latencies = np.array([r.latency_ms for r in latest if r.error is None], dtype=float)
        window = [
            (r.created_at, r.latency_ms, r.error) for r in latest if r.created_at >= now - window_s
        ]
        return {
            "predictions": len(latest) - errors,
            "failed_predictions": errors,
            "error_rate": errors / len(latest) if latest else 0.0,
            "by_class": dict(sorted(by_class.items())),
            "latency_ms": _percentiles(latencies),
            "feedback": {  # the accuracy counts trusted feedback (the admin's) only
                "count": feedback_total,
                "trusted": trusted_total,
                "accuracy": (trusted_right or 0) / trusted_total if trusted_total else None,
                "client_accuracy": (feedback_correct or 0) / feedback_total
                if feedback_total
                else None,
            },
            "series": {"bucket_s": bucket_s, "points": _series(window, now - window_s, bucket_s)},
            "window": {
                "rows": len(latest),
                "limit": rows,
                "since": latest[-1].created_at if latest else None,
            },
        }

    def prune(self, older_than: float, batch: int = 5000) -> int:
        """Delete predictions made before ``older_than`` (seconds since the epoch) in batches
        of ``batch`` rows, one transaction each; predictions with feedback are kept (they are
        labelled data). Returns how many were deleted."""
        p, deleted = predictions, 0
        labelled = sa.select(feedback.c.prediction_id)
        while True:
            doomed = (
                sa.select(p.c.id)
                .where(p.c.created_at < older_than, p.c.id.not_in(labelled))
                .order_by(p.c.created_at)
                .limit(batch)
            )
            with self._transaction() as connection:
                count = connection.execute(p.delete().where(p.c.id.in_(doomed))).rowcount
            deleted += count
            if count < batch:
                return deleted


def _insert_ignoring(connection, values: list[dict]):
    """``INSERT ... ON CONFLICT (id) DO NOTHING`` in the connection's dialect."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(predictions).values(values).on_conflict_do_nothing(index_elements=["id"])


def _percentiles(latencies: np.ndarray) -> dict:
    if not len(latencies):
        return {"p50": None, "p95": None, "p99": None}
    values = np.percentile(latencies, [50, 95, 99]).tolist()
    return dict(zip(("p50", "p95", "p99"), values, strict=True))


def _series(rows, start: float, bucket_s: float) -> list[dict]:
    """Requests, errors and latency percentiles per bucket of ``bucket_s`` seconds."""
    buckets: dict[int, list] = {}
    for created_at, latency_ms, error in rows:
        buckets.setdefault(int((created_at - start) // bucket_s), []).append((latency_ms, error))
    series = []
    for bucket in sorted(buckets):
        values = [latency for latency, error in buckets[bucket] if error is None]
        series.append(
            {
                "start": start + bucket * bucket_s,
                "requests": len(buckets[bucket]),
                "errors": sum(error is not None for _, error in buckets[bucket]),
                "latency_p50_ms": float(np.percentile(values, 50)) if values else None,
                "latency_p95_ms": float(np.percentile(values, 95)) if values else None,
            }
        )
    return series


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
        rows = [{name: _plain(row.get(name)) for name in _PREDICTION_COLUMNS} for row in rows]
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
