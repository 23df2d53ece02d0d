"""What every part of the store shares: a connection to a database whose schema is current,
and the errors it raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from imgclf.store.database import create_engine
from imgclf.store.migrations import check_current


class StoreError(ValueError):
    """A request the store cannot satisfy; the message says why."""


class FeedbackExists(StoreError):
    """The prediction has feedback already; only the admin may correct it."""


class JobNotFound(StoreError):
    """No job with that id."""


class JobFinished(StoreError):
    """The job has already ended; nothing is left to cancel."""


class JobConflict(StoreError):
    """A job of that kind is already queued or running."""

    def __init__(self, job: dict):
        super().__init__(f"retrain job {job['id']} is already {job['state']}")
        self.job = job


#: What a database that is stopped, unreachable, locked or out of connections raises.
UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def unavailable(error: Exception) -> str:
    """Why the database is unavailable, in one line without the statement or its parameters
    (the driver's own message: it names host and port, never a password)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0][:200]}"


class Connected:
    """An engine for ``database_url`` whose schema is the newest; reads and transactions.

    Raises:
        ConfigError: a malformed ``DATABASE_URL``, a database that cannot be reached, or one
            whose schema is behind the code's (run ``imgclf db upgrade``).
    """

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.engine = create_engine(database_url)
        self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        check_current(self.engine, database_url)

    def ping(self) -> str | None:
        """None when the database answers a trivial query, else why not (one line)."""
        try:
            with self._read() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception as error:
            return unavailable(error)
        return None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.connect() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection
