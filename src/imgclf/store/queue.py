"""The job queue: jobs created, claimed by one worker each, kept alive by heartbeats, finished,
cancelled; dead ones (a silent heartbeat, a gone pid, a queue nobody serves) failed."""

from __future__ import annotations

import json
import os
import socket
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from imgclf.store.base import Connected, JobConflict, JobFinished, JobNotFound
from imgclf.store.database import jobs
from imgclf.store.jobstates import LIVE_STATES, JobState

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

_JSON_COLUMNS = ("parameters", "progress", "result")


class JobQueue(Connected):
    """Jobs of each kind, at most one live at a time."""

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
        job_id = uuid.uuid4().hex[:12]
        row = {
            "id": job_id,
            "kind": kind,
            "state": JobState.QUEUED.value,
            "parameters": json.dumps(parameters),
            "run_dir": run_dir,
            "progress": json.dumps({"stage": "queued"}),
            "trigger": trigger,
            "reason": reason,
        }
        try:
            with self._transaction() as connection:
                now = clock(connection)
                self._fail_dead_jobs(connection, now)
                connection.execute(jobs.insert().values(**row, created_at=now, heartbeat_at=now))
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
        with self._transaction() as connection:
            now = clock(connection)
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

    def update_job(self, job_id: str, heartbeat: bool = False, **fields) -> None:
        """Set columns of a job (``parameters``, ``progress`` and ``result`` as JSON); with
        ``heartbeat``, also its heartbeat, at the database's time (hosts' clocks may differ)."""
        for name in _JSON_COLUMNS:
            if name in fields:
                fields[name] = json.dumps(fields[name])
        with self._transaction() as connection:
            if heartbeat:
                fields["heartbeat_at"] = clock(connection)
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
                    finished_at=clock(connection),
                    **fields,
                )
            )
        return ended.rowcount == 1

    def job(self, job_id: str) -> dict | None:
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, clock(connection))
            row = connection.execute(jobs.select().where(jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def jobs(self, limit: int = 50) -> list[dict]:
        """Return the latest jobs, newest first (dead live jobs are failed first)."""
        with self._transaction() as connection:
            self._fail_dead_jobs(connection, clock(connection))
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
        with self._transaction() as connection:
            now = clock(connection)
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
            self._fail_dead_jobs(connection, clock(connection))

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
    """A job row as a dict; a JSON column that does not parse (a row written by hand) reads
    as None, so that the job can be failed with a message instead of failing its readers."""
    job = dict(row._mapping)
    job["parameters"] = _json(job["parameters"] or "{}")
    job["progress"] = (_json(job["progress"]) or {}) if job["progress"] else {}
    job["result"] = (_json(job["result"]) or {}) if job["result"] else {}
    job["log_tail"] = job["log_tail"].splitlines() if job["log_tail"] else []
    return job


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def clock(connection: Connection) -> float:
    """The database's time in seconds since the epoch: every host that writes or judges a
    heartbeat reads the same clock, whatever its own says."""
    if connection.dialect.name == "postgresql":
        return float(
            connection.exec_driver_sql("SELECT EXTRACT(EPOCH FROM clock_timestamp())").scalar()
        )
    return float(
        connection.exec_driver_sql("SELECT (julianday('now') - 2440587.5) * 86400.0").scalar()
    )
