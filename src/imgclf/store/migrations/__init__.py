"""The database schema's history, as Alembic migrations (``versions/``).

``imgclf db upgrade`` (``upgrade``) brings a database to the newest schema, once, from one
process; ``check_current`` is what every ``Store`` does at start instead: it refuses a database
that is behind, naming the command that fixes it. A SQLite file made before migrations existed
(it has the tables but no ``alembic_version``) is taken as the first revision, then upgraded.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from imgclf.config import ConfigError
from imgclf.store.database import create_engine, describe_url

FIRST_REVISION = "0001"


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


@cache
def head() -> str:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(connection: sa.Connection) -> str | None:
    """The revision a database is at (None: no schema yet)."""
    return MigrationContext.configure(connection).get_current_revision()


class DatabaseUnreachable(ConfigError):
    """The database did not answer (stopped, unreachable): it may come back, unlike a
    malformed URL or a schema that is behind."""


def _connect(engine: sa.Engine, database_url: str) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise DatabaseUnreachable(
            f"DATABASE_URL: cannot reach the database at {describe_url(database_url)}: {reason}"
        ) from None


def check_current(engine: sa.Engine, database_url: str) -> None:
    """Refuse a database that cannot be reached or whose schema is not the newest.

    Raises:
        ConfigError: the message says which, and what to run.
    """
    with _connect(engine, database_url) as connection:
        revision = current(connection)
    if revision != head():
        raise ConfigError(
            f"the database at {describe_url(database_url)} has schema "
            f"{revision or 'none (empty)'}; this code needs {head()}: run `imgclf db upgrade` "
            "(make run does it)"
        )


def upgrade(database_url: str) -> tuple[str | None, str]:
    """Bring the database to the newest schema; returns ``(revision before, revision now)``.

    Raises:
        ConfigError: a malformed URL or a database that cannot be reached.
    """
    engine = create_engine(database_url)
    try:
        with _connect(engine, database_url) as connection:
            if connection.dialect.name == "postgresql":  # two containers upgrading at once wait
                connection.execute(sa.text("SELECT pg_advisory_lock(20261123)"))
                connection.commit()
            before = current(connection)
            if before is None and sa.inspect(connection).has_table("jobs"):
                command.stamp(_config(connection), FIRST_REVISION)  # made before migrations
            command.upgrade(_config(connection), "head")
            connection.commit()
            return before, current(connection)
    finally:
        engine.dispose()
