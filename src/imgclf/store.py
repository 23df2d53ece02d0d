"""The service's database: prediction log, feedback and retrain jobs (SQLite by default).

``DATABASE_URL`` names the database (``sqlite:///path/to/file.db``). Every call opens a short
connection, so the store is safe to share between gunicorn workers, threads and the retrain job
process: SQLite in WAL mode serialises writers and lets readers go on. Each write is one
transaction, so a reader never sees half of one.
"""

from __future__ import annotations

import atexit
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

import numpy as np


class JobState(StrEnum):
    """The states of a job: the one list, used by the store, the jobs, the API and the dashboard.

    ``queued`` and ``running`` are live; ``promoted`` and ``rejected`` (by the gate) and
    ``failed`` are final.
    """

    QUEUED = "queued"
    RUNNING = "running"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def live(self) -> bool:
        return self in LIVE_STATES


LIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
FINAL_STATES = (JobState.PROMOTED, JobState.REJECTED, JobState.FAILED)
_LIVE_SQL = "(" + ", ".join(f"'{state.value}'" for state in LIVE_STATES) + ")"

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    model_version TEXT,
    label TEXT,
    confidence REAL,
    latency_ms REAL NOT NULL,
    image_sha256 TEXT,
    width INTEGER,
    height INTEGER,
    format TEXT,
    bytes INTEGER,
    brightness REAL,
    contrast REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id TEXT NOT NULL REFERENCES predictions (id),
    true_label TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    parameters TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    pid INTEGER,
    run_dir TEXT,
    result TEXT,
    error TEXT
);
"""

#: A live job whose process has not written a heartbeat for this long is dead.
HEARTBEAT_TIMEOUT_S = 30.0


class StoreError(ValueError):
    """A request the store cannot satisfy; the message says why."""


class JobConflict(StoreError):
    """A retrain job is already queued or running."""

    def __init__(self, job: dict):
        super().__init__(f"retrain job {job['id']} is already {job['state']}")
        self.job = job


def sqlite_path(database_url: str) -> Path:
    """Return the file of a ``sqlite:///`` URL.

    Raises:
        StoreError: another kind of database URL.
    """
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        raise StoreError(f"DATABASE_URL={database_url!r}: only sqlite:///<path> is supported")
    return Path(database_url[len(prefix) :])


class Store:
    """Prediction log, feedback and jobs in one SQLite file."""

    def __init__(self, database_url: str):
        self.path = sqlite_path(database_url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        # WAL + NORMAL: a commit survives a crash of the process (not of the machine's power)
        # and costs no fsync, which is what keeps logging off the prediction latency
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            yield connection
        finally:
            connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    # ---------------------------------------------------------------- predictions and feedback
    def log_predictions(self, rows: list[dict]) -> None:
        """Insert prediction records (keys: the ``predictions`` columns; ``id`` required)."""
        if not rows:
            return
        columns = (
            "id created_at model_version label confidence latency_ms image_sha256 width "
            "height format bytes brightness contrast error"
        ).split()
        values = [tuple(row.get(column) for column in columns) for row in rows]
        with self._transaction() as connection:
            connection.executemany(
                f"INSERT INTO predictions ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                values,
            )

    def prediction(self, prediction_id: str) -> dict | None:
        with self._connect() as connection:
            row = connection.execute(
                "SELECT * FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
        return dict(row) if row else None

    def add_feedback(self, prediction_id: str, true_label: str) -> dict:
        """Store the true label of a logged prediction.

        Raises:
            StoreError: no prediction with this id (or it failed, so there is no label).
        """
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT label FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
            if row is None or row["label"] is None:
                raise StoreError(f"no prediction with id {prediction_id!r}")
            now = time.time()
            cursor = connection.execute(
                "INSERT INTO feedback (prediction_id, true_label, created_at) VALUES (?, ?, ?)",
                (prediction_id, true_label, now),
            )
        return {
            "id": cursor.lastrowid,
            "prediction_id": prediction_id,
            "predicted_label": row["label"],
            "true_label": true_label,
            "correct": row["label"] == true_label,
            "created_at": now,
        }

    def recent_inputs(self, limit: int = 500) -> list[dict]:
        """Return the image statistics of the latest successful predictions, newest first."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT created_at, label, confidence, brightness, contrast, width, height "
                "FROM predictions WHERE error IS NULL ORDER BY created_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(row) for row in rows]

    def statistics(self, window_s: float = 3600.0, bucket_s: float = 60.0) -> dict:
        """Production figures: counts, per-class counts, latency percentiles, error rate,
        feedback accuracy and a per-minute series over the last ``window_s`` seconds."""
        now = time.time()
        with self._connect() as connection:
            total, errors = connection.execute(
                "SELECT COUNT(*), COUNT(error) FROM predictions"
            ).fetchone()
            by_class = dict(
                connection.execute(
                    "SELECT label, COUNT(*) FROM predictions WHERE error IS NULL "
                    "GROUP BY label ORDER BY label"
                ).fetchall()
            )
            latencies = np.asarray(
                [
                    row[0]
                    for row in connection.execute(
                        "SELECT latency_ms FROM predictions WHERE error IS NULL "
                        "ORDER BY created_at DESC LIMIT 10000"
                    )
                ],
                dtype=float,
            )
            feedback_total, feedback_correct = connection.execute(
                "SELECT COUNT(*), SUM(p.label = f.true_label) FROM feedback f "
                "JOIN predictions p ON p.id = f.prediction_id"
            ).fetchone()
            series_rows = connection.execute(
                "SELECT CAST((created_at - ?) / ? AS INTEGER) AS bucket, COUNT(*), "
                "COUNT(error), AVG(latency_ms) FROM predictions WHERE created_at >= ? "
                "GROUP BY bucket ORDER BY bucket",
                (now - window_s, bucket_s, now - window_s),
            ).fetchall()
            series_latency = {}
            for bucket, latency in connection.execute(
                "SELECT CAST((created_at - ?) / ? AS INTEGER), latency_ms FROM predictions "
                "WHERE created_at >= ? AND error IS NULL",
                (now - window_s, bucket_s, now - window_s),
            ):
                series_latency.setdefault(bucket, []).append(latency)
        percentiles = (
            dict(
                zip(
                    ("p50", "p95", "p99"),
                    np.percentile(latencies, [50, 95, 99]).tolist(),
                    strict=True,
                )
            )
            if len(latencies)
            else {"p50": None, "p95": None, "p99": None}
        )
        series = []
        for bucket, count, failed, _mean in series_rows:
            values = series_latency.get(bucket, [])
            series.append(
                {
                    "start": now - window_s + bucket * bucket_s,
                    "requests": count,
                    "errors": failed,
                    "latency_p50_ms": float(np.percentile(values, 50)) if values else None,
                    "latency_p95_ms": float(np.percentile(values, 95)) if values else None,
                }
            )
        return {
            "predictions": total - errors,
            "failed_predictions": errors,
            "error_rate": errors / total if total else 0.0,
            "by_class": by_class,
            "latency_ms": percentiles,
            "feedback": {
                "count": feedback_total,
                "accuracy": (feedback_correct or 0) / feedback_total if feedback_total else None,
            },
            "series": {"bucket_s": bucket_s, "points": series},
        }

    # ----------------------------------------------------------------------------------- jobs
    def create_job(self, kind: str, parameters: dict, run_dir: str) -> dict:
        """Queue a job, unless one of the same kind is live.

        Raises:
            JobConflict: a job of this kind is queued or running (dead ones are failed first).
        """
        now = time.time()
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, now)
            live = connection.execute(
                f"SELECT * FROM jobs WHERE kind = ? AND state IN {_LIVE_SQL} LIMIT 1",
                (kind,),
            ).fetchone()
            if live is not None:
                raise JobConflict(_job(live))
            job_id = uuid.uuid4().hex[:12]
            connection.execute(
                "INSERT INTO jobs (id, kind, state, parameters, created_at, heartbeat_at, "
                "run_dir) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind, JobState.QUEUED, json.dumps(parameters), now, now, run_dir),
            )
        return self.job(job_id)

    def update_job(self, job_id: str, **fields) -> None:
        """Set columns of a job (``result`` is stored as JSON)."""
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        names = ", ".join(f"{name} = ?" for name in fields)
        with self._transaction() as connection:
            connection.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))

    def finish_job(self, job_id: str, state: JobState, result: dict | None, error: str | None):
        """Record a job's final state, unless it was already marked final (e.g. as dead)."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ? "
                f"WHERE id = ? AND state IN {_LIVE_SQL}",
                (state, json.dumps(result or {}), error, time.time(), job_id),
            )

    def job(self, job_id: str) -> dict | None:
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, time.time())
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, limit: int = 50) -> list[dict]:
        """Return the latest jobs, newest first (dead live jobs are failed first)."""
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, time.time())
            rows = connection.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_job(row) for row in rows]

    def job_outcomes(self) -> dict[str, int]:
        with self._connect() as connection:
            return dict(connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def _fail_dead_jobs(self, connection: sqlite3.Connection, now: float) -> None:
        for row in connection.execute(
            f"SELECT id, pid, heartbeat_at FROM jobs WHERE state IN {_LIVE_SQL}"
        ).fetchall():
            stale = now - (row["heartbeat_at"] or 0) > HEARTBEAT_TIMEOUT_S
            if stale or (row["pid"] and not _alive(row["pid"])):
                connection.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                    (JobState.FAILED, now, "the job process died before finishing", row["id"]),
                )


def _alive(pid: int) -> bool:
    """Whether a process on this machine is running (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back on the heartbeat alone
        return True


def _job(row: sqlite3.Row) -> dict:
    job = dict(row)
    job["parameters"] = json.loads(job["parameters"] or "{}")
    job["result"] = json.loads(job["result"]) if job["result"] else {}
    return job


class PredictionLogWriter:
    """Writes prediction records in batches from a background thread, off the request path.

    ``add`` only appends to an in-memory queue; the thread inserts what has queued every
    ``interval_s`` seconds, in one transaction. ``flush`` writes now (at shutdown, or before
    a lookup that must see every record).
    """

    def __init__(self, store: Store, interval_s: float = 0.2):
        self.store = store
        self.interval_s = interval_s
        self._pending: list[dict] = []
        self._lock = threading.Lock()
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
