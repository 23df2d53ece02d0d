"""The prediction log and feedback: written in batches off the request path, read for the
statistics, the drift monitor and the review queue."""

from __future__ import annotations

import time

import numpy as np
import sqlalchemy as sa

from imgclf.store.base import Connected, FeedbackExists, StoreError
from imgclf.store.database import feedback, predictions

#: /stats reads at most this many of the latest predictions (and feedbacks).
STATS_ROWS = 10_000

PREDICTION_COLUMNS = [column.name for column in predictions.columns]


class PredictionLog(Connected):
    """Predictions and the true labels people gave them."""

    def log_predictions(self, rows: list[dict], ignore_duplicates: bool = False) -> None:
        """Insert prediction records (keys: the ``predictions`` columns; ``id`` required).

        ``ignore_duplicates``: a row whose id is stored already is skipped (a journal replayed
        twice stores each row once)."""
        if not rows:
            return
        values = [{column: row.get(column) for column in PREDICTION_COLUMNS} for row in rows]
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
        now, p = time.time(), predictions
        with self._read() as connection:
            latest = connection.execute(
                sa.select(p.c.created_at, p.c.label, p.c.latency_ms, p.c.error, p.c.unknown)
                .order_by(p.c.created_at.desc())
                .limit(rows)
            ).all()
            feedback_figures = _feedback(connection, rows)
        errors = sum(row.error is not None for row in latest)
        by_class: dict[str, int] = {}
        for row in latest:
            if row.error is None:
                by_class[row.label] = by_class.get(row.label, 0) + 1
        latencies = np.array([r.latency_ms for r in latest if r.error is None], dtype=float)
        window = [
            (r.created_at, r.latency_ms, r.error, r.unknown)
            for r in latest
            if r.created_at >= now - window_s
        ]
        flagged = [bool(r.unknown) for r in latest if r.error is None and r.unknown is not None]
        return {
            "predictions": len(latest) - errors,
            "failed_predictions": errors,
            "error_rate": errors / len(latest) if latest else 0.0,
            "by_class": dict(sorted(by_class.items())),
            "latency_ms": _percentiles(latencies),
            "unknown": {  # answers a model with a detector gave (older rows have no flag)
                "count": sum(flagged),
                "flagged_of": len(flagged),
                "rate": sum(flagged) / len(flagged) if flagged else None,
            },
            "feedback": feedback_figures,
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


def _feedback(connection, rows: int) -> dict:
    """Counts and accuracy of the latest ``rows`` feedbacks; the accuracy counts trusted
    feedback (the admin's) only, ``client_accuracy`` every one."""
    p, f = predictions, feedback
    recent = sa.select(f.c.prediction_id, f.c.true_label, f.c.trusted)
    recent = recent.order_by(f.c.id.desc()).limit(rows).subquery()
    correct = sa.case((p.c.label == recent.c.true_label, 1), else_=0)
    trusted = sa.case((recent.c.trusted, 1), else_=0)
    trusted_correct = sa.case((recent.c.trusted & (p.c.label == recent.c.true_label), 1), else_=0)
    feedback_total, feedback_correct, trusted_total, trusted_right = connection.execute(
        sa.select(
            sa.func.count(),
            sa.func.sum(correct),
            sa.func.sum(trusted),
            sa.func.sum(trusted_correct),
        ).select_from(recent.join(p, p.c.id == recent.c.prediction_id))
    ).one()
    trusted_total = trusted_total or 0
    return {
        "count": feedback_total,
        "trusted": trusted_total,
        "accuracy": (trusted_right or 0) / trusted_total if trusted_total else None,
        "client_accuracy": (feedback_correct or 0) / feedback_total if feedback_total else None,
    }


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
    """Requests, errors, unknown answers and latency percentiles per bucket of ``bucket_s``
    seconds."""
    buckets: dict[int, list] = {}
    for created_at, latency_ms, error, unknown in rows:
        buckets.setdefault(int((created_at - start) // bucket_s), []).append(
            (latency_ms, error, unknown)
        )
    series = []
    for bucket in sorted(buckets):
        values = [latency for latency, error, _ in buckets[bucket] if error is None]
        series.append(
            {
                "start": start + bucket * bucket_s,
                "requests": len(buckets[bucket]),
                "errors": sum(error is not None for _, error, _ in buckets[bucket]),
                "unknown": sum(bool(unknown) for _, error, unknown in buckets[bucket]),
                "latency_p50_ms": float(np.percentile(values, 50)) if values else None,
                "latency_p95_ms": float(np.percentile(values, 95)) if values else None,
            }
        )
    return series
