"""What every part of the store shares: a connection to a database whose schema is current,
and the errors it raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection

from imgclf.store.database import create_engine
from imgclf.store.migrations import check_current


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

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.connect() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection
