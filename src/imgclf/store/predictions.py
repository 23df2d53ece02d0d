"""The prediction log and feedback: written in batches off the request path, read for the
statistics, the drift monitor and the review queue."""

from __future__ import annotations

import atexit
import logging
import threading
import time

import numpy as np
import sqlalchemy as sa

from imgclf.store.base import Connected, StoreError
from imgclf.store.database import feedback, predictions

_PREDICTION_COLUMNS = [column.name for column in predictions.columns]


class PredictionLog(Connected):
    """Predictions and the true labels people gave them."""

    def log_predictions(self, rows: list[dict]) -> None:
        """Insert prediction records (keys: the ``predictions`` columns; ``id`` required)."""
        if not rows:
            return
        values = [{column: row.get(column) for column in _PREDICTION_COLUMNS} for row in rows]
        with self._transaction() as connection:
            connection.execute(predictions.insert(), values)

    def prediction(self, prediction_id: str) -> dict | None:
        with self._read() as connection:
            row = connection.execute(
                predictions.select().where(predictions.c.id == prediction_id)
            ).first()
        return dict(row._mapping) if row else None

    def add_feedback(self, prediction_id: str, true_label: str) -> dict:
        """Store the true label of a logged prediction.

        Raises:
            StoreError: no prediction with this id (or it failed, so there is no label).
        """
        with self._transaction() as connection:
            label = connection.execute(
                sa.select(predictions.c.label).where(predictions.c.id == prediction_id)
            ).scalar()
            if label is None:
                raise StoreError(f"no prediction with id {prediction_id!r}")
            now = time.time()
            row = {"prediction_id": prediction_id, "true_label": true_label, "created_at": now}
            stored = connection.execute(feedback.insert().values(**row)).inserted_primary_key
        return {"id": stored[0], **row, "predicted_label": label, "correct": label == true_label}

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

    def statistics(self, window_s: float = 3600.0, bucket_s: float = 60.0) -> dict:
        """Production figures: counts, per-class counts, latency percentiles, error rate,
        feedback accuracy and a per-minute series over the last ``window_s`` seconds."""
        now, p = time.time(), predictions
        with self._read() as connection:
            total, errors = connection.execute(
                sa.select(sa.func.count(), sa.func.count(p.c.error))
            ).one()
            by_class = dict(
                connection.execute(
                    sa.select(p.c.label, sa.func.count())
                    .where(p.c.error.is_(None))
                    .group_by(p.c.label)
                    .order_by(p.c.label)
                ).all()
            )
            latencies = connection.execute(
                sa.select(p.c.latency_ms)
                .where(p.c.error.is_(None))
                .order_by(p.c.created_at.desc())
                .limit(10000)
            ).scalars()
            latencies = np.fromiter(latencies, dtype=float)
            correct = sa.case((p.c.label == feedback.c.true_label, 1), else_=0)
            feedback_total, feedback_correct = connection.execute(
                sa.select(sa.func.count(), sa.func.sum(correct)).select_from(
                    feedback.join(p, p.c.id == feedback.c.prediction_id)
                )
            ).one()
            window = connection.execute(
                sa.select(p.c.created_at, p.c.latency_ms, p.c.error).where(
                    p.c.created_at >= now - window_s
                )
            ).all()
        return {
            "predictions": total - errors,
            "failed_predictions": errors,
            "error_rate": errors / total if total else 0.0,
            "by_class": by_class,
            "latency_ms": _percentiles(latencies),
            "feedback": {
                "count": feedback_total,
                "accuracy": (feedback_correct or 0) / feedback_total if feedback_total else None,
            },
            "series": {"bucket_s": bucket_s, "points": _series(window, now - window_s, bucket_s)},
        }


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
    """Writes prediction records in batches from a background thread, off the request path.

    ``add`` only appends to an in-memory queue; the thread inserts what has queued every
    ``interval_s`` seconds, in one transaction. ``flush`` writes now (at shutdown, or before
    a lookup that must see every record).
    """

    def __init__(self, store: PredictionLog, interval_s: float = 0.2):
        self.store = store
        self.interval_s = interval_s
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, rows: list[dict]) -> None:
        with self._lock:
            self._pending.extend(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
                self._thread.start()
                atexit.register(self.flush)

    def flush(self) -> None:
        """Write what has queued; when it returns, every row added before the call is stored.

        Request threads only ever wait for the short swap under ``_lock``, never for the
        database: the insert runs under ``_write_lock``, which only flushes share.
        """
        with self._write_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if rows:
                self.store.log_predictions(rows)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            try:
                self.flush()
            except Exception:  # a locked or full database: keep the rows' count, go on serving
                logging.getLogger(__name__).exception("writing the prediction log failed")
