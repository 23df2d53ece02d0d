"""The service's database: prediction log, feedback and jobs, on SQLAlchemy (Core).

``DATABASE_URL`` names the database: ``sqlite:///path/to/file.db`` (the embedded default) or
``postgresql+psycopg://user:password@host:port/name`` (a server, for several hosts). The
schema is made and changed by Alembic migrations (``imgclf db upgrade``, run once by
``make run`` and by the container's entry point); a ``Store`` refuses a database whose schema
is behind rather than changing it from every worker.

SQLite keeps its single-writer guarantees: every write is one ``BEGIN IMMEDIATE``
transaction, in WAL mode, so readers go on while one writer writes. On both engines, at most
one job of a kind is live (queued or running): a partial unique index says so, not the code.
The curation audit table is defined on the same ``metadata`` in ``imgclf.audit``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imgclf.config import ConfigError


class JobState(StrEnum):
    """The states of a job: the one list, used by the store, the jobs, the API and the dashboard.

    ``queued`` and ``running`` are live; ``promoted`` and ``rejected`` (by the gate),
    ``failed`` and ``cancelled`` (by request) are final.
    """

    QUEUED = "queued"
    RUNNING = "running"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def live(self) -> bool:
        return self in LIVE_STATES


LIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
FINAL_STATES = (JobState.PROMOTED, JobState.REJECTED, JobState.FAILED, JobState.CANCELLED)
#: Who started a job: a person (through the API) or the automatic retraining policy.
_LIVE_SQL = "state IN (" + ", ".join(f"'{state.value}'" for state in LIVE_STATES) + ")"

#: A running job whose worker has not written a heartbeat for this long is dead.
HEARTBEAT_TIMEOUT_S = 30.0
#: A queued job that no worker claimed for this long fails (is a worker running?).
QUEUE_TIMEOUT_S = 600.0


def _host_identity() -> str:
    """This machine's name and PID namespace: where a worker's pid means something.

    Two containers may share a host name (host networking) but never a PID namespace, and a
    pid is only worth checking inside the namespace it came from.
    """
    name = socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"
    except OSError:
        return name
    return f"{name}/{namespace.replace(':', '').replace('[', '-').rstrip(']')}"


#: Recorded with the pid of a job's worker; the pid is checked only where this matches.
HOST = _host_identity()

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("model_version", sa.String(32)),
    sa.Column("label", sa.String(128)),
    sa.Column("confidence", sa.Float),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("image_sha256", sa.String(64)),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("format", sa.String(16)),
    sa.Column("bytes", sa.Integer),
    sa.Column("brightness", sa.Float),
    sa.Column("contrast", sa.Float),
    sa.Column("error", sa.Text),
    sa.Index("predictions_time", "created_at"),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(64), sa.ForeignKey("predictions.id"), nullable=False),
    sa.Column("true_label", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("run_dir", sa.Text),
    sa.Column("progress", sa.Text),
    sa.Column("log_tail", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("trigger", sa.String(16)),
    sa.Column("reason", sa.Text),
    sa.Column("cancel_requested_at", sa.Float),
    sa.Index(
        "one_live_job",
        "kind",
        unique=True,
        sqlite_where=sa.text(_LIVE_SQL),
        postgresql_where=sa.text(_LIVE_SQL),
    ),
)
_JSON_COLUMNS = ("parameters", "progress", "result")
_PREDICTION_COLUMNS = [column.name for column in predictions.columns]


class StoreError(ValueError):
    """A request the store cannot satisfy; the message says why."""


class JobNotFound(StoreError):
    """No job with that id."""


class JobFinished(StoreError):
    """The job has already ended; nothing is left to cancel."""


class JobConflict(StoreError):
    """A job of that kind is already queued or running."""

    def __init__(self, job: dict):
        super().__init__(f"retrain job {job['id']} is already {job['state']}")
        self.job = job


def create_engine(database_url: str) -> Engine:
    """An engine for ``DATABASE_URL``, with SQLite set up for WAL and ``BEGIN IMMEDIATE``.

    Raises:
        ConfigError: the URL is malformed or names a database this project does not support.
    """
    try:
        url = sa.make_url(database_url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"DATABASE_URL={database_url!r} is not a database URL; expected sqlite:///<file> "
            "or postgresql+psycopg://user:password@host:port/name"
        ) from None
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
    raise ConfigError(
        f"DATABASE_URL uses {url.get_backend_name()!r}; expected sqlite or postgresql+psycopg"
    )


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of the process (not of the machine's power)
        # and costs no fsync, which is what keeps logging off the prediction latency
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection):
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def describe_url(database_url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return sa.make_url(database_url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return repr(database_url)


class Store:
    """Prediction log, feedback and jobs in one database (see the module docstring).

    Create it in the process that uses it (after gunicorn forks): it holds a connection pool.

    Raises:
        ConfigError: a malformed ``DATABASE_URL``, a database that cannot be reached, or one
            whose schema is behind the code's (run ``imgclf db upgrade``).
    """

    def __init__(self, database_url: str):
        from imgclf import migrations

        self.database_url = database_url
        self.engine = create_engine(database_url)
        self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        migrations.check_current(self.engine, database_url)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.connect() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    # ---------------------------------------------------------------- predictions and feedback
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

    # ----------------------------------------------------------------------------------- jobs
    def create_job(
        self,
        kind: str,
        parameters: dict,
        run_dir: str,
        trigger: str = "manual",
        reason: str | None = None,
    ) -> dict:
        """Queue a job, unless one of the same kind is live (the database refuses a second).

        ``trigger`` says who started it (``manual`` or ``auto``), ``reason`` why.

        Raises:
            JobConflict: a job of this kind is queued or running (dead ones are failed first).
        """
        now = time.time()
        job_id = uuid.uuid4().hex[:12]
        row = {
            "id": job_id,
            "kind": kind,
            "state": JobState.QUEUED.value,
            "parameters": json.dumps(parameters),
            "created_at": now,
            "heartbeat_at": now,
            "run_dir": run_dir,
            "progress": json.dumps({"stage": "queued"}),
            "trigger": trigger,
            "reason": reason,
        }
        try:
            with self._transaction() as connection:
                self._fail_dead_jobs(connection, now)
                connection.execute(jobs.insert().values(**row))
        except sa.exc.IntegrityError:
            live = self.live_job(kind)
            if live is None:  # it ended between the insert and this look: try once more
                return self.create_job(kind, parameters, run_dir, trigger, reason)
            raise JobConflict(live) from None
        return self.job(job_id)

    def live_job(self, kind: str) -> dict | None:
        with self._read() as connection:
            row = connection.execute(
                jobs.select().where(jobs.c.kind == kind, jobs.c.state.in_(LIVE_STATES))
            ).first()
        return _job(row) if row else None

    def claim_job(self, kind: str, pid: int, host: str = HOST) -> dict | None:
        """Take the oldest queued job of a kind for a worker: it becomes ``running``.

        On PostgreSQL the row is locked with ``FOR UPDATE SKIP LOCKED``, so that two workers
        never claim the same job; on SQLite the write transaction serialises them.

        Returns:
            The claimed job, or None when nothing is queued.
        """
        now = time.time()
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, now)
            job_id = connection.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.kind == kind, jobs.c.state == JobState.QUEUED)
                .order_by(jobs.c.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).scalar()
            if job_id is None:
                return None
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state == JobState.QUEUED)
                .values(
                    state=JobState.RUNNING,
                    started_at=now,
                    heartbeat_at=now,
                    host=host,
                    pid=pid,
                    progress=json.dumps({"stage": "starting"}),
                )
            )
        return self.job(job_id)

    def update_job(self, job_id: str, **fields) -> None:
        """Set columns of a job (``parameters``, ``progress`` and ``result`` as JSON)."""
        for name in _JSON_COLUMNS:
            if name in fields:
                fields[name] = json.dumps(fields[name])
        with self._transaction() as connection:
            connection.execute(jobs.update().where(jobs.c.id == job_id).values(**fields))

    def finish_job(
        self, job_id: str, state: JobState, result: dict | None, error: str | None, **fields
    ) -> bool:
        """Record a job's final state, unless it was already final (e.g. failed as dead).

        Returns:
            Whether this call ended the job.
        """
        for name in _JSON_COLUMNS:
            if name in fields:
                fields[name] = json.dumps(fields[name])
        with self._transaction() as connection:
            ended = connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state.in_(LIVE_STATES))
                .values(
                    state=state,
                    result=json.dumps(result or {}),
                    error=error,
                    finished_at=time.time(),
                    **fields,
                )
            )
        return ended.rowcount == 1

    def job(self, job_id: str) -> dict | None:
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, time.time())
            row = connection.execute(jobs.select().where(jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def jobs(self, limit: int = 50) -> list[dict]:
        """Return the latest jobs, newest first (dead live jobs are failed first)."""
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, time.time())
            rows = connection.execute(
                jobs.select().order_by(jobs.c.created_at.desc()).limit(limit)
            ).all()
        return [_job(row) for row in rows]

    def cancel_job(self, job_id: str) -> dict:
        """Cancel a job: a queued one ends ``cancelled`` now; a running one is marked, and its
        worker stops it (``cancel_requested``) and records ``cancelled``.

        Returns:
            The job after the change.

        Raises:
            JobNotFound: no job with this id.
            JobFinished: the job has already ended (its state is in the message).
        """
        now = time.time()
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, now)
            row = connection.execute(
                sa.select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise JobNotFound(f"no retrain job {job_id!r}")
            if row.state not in LIVE_STATES:
                raise JobFinished(f"job {job_id} has already ended: {row.state}")
            values: dict = {"cancel_requested_at": now}
            if row.state == JobState.QUEUED:
                values.update(
                    state=JobState.CANCELLED,
                    finished_at=now,
                    error="cancelled by request before a worker started it",
                )
            connection.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
        return self.job(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel this job."""
        with self._read() as connection:
            return (
                connection.execute(
                    sa.select(jobs.c.cancel_requested_at).where(jobs.c.id == job_id)
                ).scalar()
                is not None
            )

    def last_job(
        self, kind: str, trigger: str | None = None, states: tuple | None = None
    ) -> dict | None:
        """The newest job of a kind (started by ``trigger``, in ``states``, when given)."""
        query = jobs.select().where(jobs.c.kind == kind)
        if trigger is not None:
            query = query.where(jobs.c.trigger == trigger)
        if states is not None:
            query = query.where(jobs.c.state.in_(states))
        with self._read() as connection:
            row = connection.execute(query.order_by(jobs.c.created_at.desc()).limit(1)).first()
        return _job(row) if row else None

    def job_outcomes(self) -> dict[str, int]:
        with self._read() as connection:
            query = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
            return dict(connection.execute(query).all())

    def fail_dead_jobs(self) -> None:
        """Mark live jobs whose worker is gone as failed (see ``_fail_dead_jobs``)."""
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, time.time())

    def _fail_dead_jobs(self, connection: Connection, now: float) -> None:
        """A running job is dead when its heartbeat is older than ``HEARTBEAT_TIMEOUT_S``, or,
        on the host that runs it, when its worker's pid is gone; a queued one when no worker
        claimed it within ``QUEUE_TIMEOUT_S``."""
        live = connection.execute(
            sa.select(jobs.c.id, jobs.c.state, jobs.c.heartbeat_at, jobs.c.host, jobs.c.pid)
            .where(jobs.c.state.in_(LIVE_STATES))
            .with_for_update(skip_locked=True)
        ).all()
        for job in live:
            reason = _death(job, now)
            if reason:
                connection.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.state == job.state)
                    .values(state=JobState.FAILED, finished_at=now, error=reason)
                )


def _death(job, now: float) -> str | None:
    """Why a live job is dead, or None while it is alive."""
    silent = now - (job.heartbeat_at or 0)
    if job.state == JobState.QUEUED:
        if silent > QUEUE_TIMEOUT_S:
            return (
                f"no worker claimed the job within {QUEUE_TIMEOUT_S:.0f} s: is `imgclf worker` "
                "(make worker) running?"
            )
        return None
    if silent > HEARTBEAT_TIMEOUT_S:
        return (
            f"the worker running the job (pid {job.pid} on {job.host}) stopped sending "
            f"heartbeats {silent:.0f} s ago: it died or was killed"
        )
    if job.host == HOST and job.pid and not _alive(job.pid):
        return f"the worker running the job (pid {job.pid} on {job.host}) is gone"
    return None


def _alive(pid: int) -> bool:
    """Whether a process on this machine is running (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back on the heartbeat alone
        return True


def _job(row) -> dict:
    job = dict(row._mapping)
    job["parameters"] = json.loads(job["parameters"] or "{}")
    job["progress"] = json.loads(job["progress"]) if job["progress"] else {}
    job["result"] = json.loads(job["result"]) if job["result"] else {}
    job["log_tail"] = job["log_tail"].splitlines() if job["log_tail"] else []
    return job


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

    def __init__(self, store: Store, interval_s: float = 0.2):
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
