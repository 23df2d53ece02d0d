"""The service's database: its engine and its schema (SQLAlchemy Core).

``DATABASE_URL`` names the database: ``sqlite:///path/to/file.db`` (the embedded default) or
``postgresql+psycopg://user:password@host:port/name`` (a server, for several hosts). The
schema is made and changed by Alembic migrations (``imgclf.store.migrations``, ``imgclf db
upgrade``), which read the tables here; ``imgclf.store`` reads and writes them.

SQLite keeps its single-writer guarantees: every write is one ``BEGIN IMMEDIATE``
transaction, in WAL mode, so readers go on while one writer writes. On both engines, at most
one job of a kind is live (queued or running): a partial unique index says so, not the code.
The curation audit table is defined on the same ``metadata`` in ``imgclf.store.audit``.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imgclf.config import ConfigError
from imgclf.store.jobstates import LIVE_SQL

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
    # a keyed hash of the client's address (drift needs several distinct clients to retrain)
    sa.Column("client", sa.String(16)),
    # the model answered "unknown" (the image is unlike its classes); None: it has no detector
    sa.Column("unknown", sa.Boolean),
    sa.Index("predictions_time", "created_at"),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(64), sa.ForeignKey("predictions.id"), nullable=False),
    sa.Column("true_label", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # given with the admin token (the feedback accuracy counts these); else with the
    # prediction's feedback token
    sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("feedback_once", "prediction_id", unique=True),
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
        sqlite_where=sa.text(LIVE_SQL),
        postgresql_where=sa.text(LIVE_SQL),
    ),
)


def create_engine(database_url: str) -> Engine:
    """An engine for ``DATABASE_URL``, with SQLite set up for WAL and ``BEGIN IMMEDIATE``.

    Raises:
        ConfigError: the URL is malformed or names a database this project does not support.
    """
    try:
        url = sa.make_url(database_url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL (not shown: it may hold a password); expected "
            "sqlite:///<file> or postgresql+psycopg://user:password@host:port/name"
        ) from None
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.get_backend_name() == "postgresql":
        # a server that is unreachable (no answer, not a refusal) fails in 5 s, not minutes
        timeout = {} if "connect_timeout" in url.query else {"connect_timeout": 5}
        return sa.create_engine(
            url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=timeout
        )
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
        return "<a malformed DATABASE_URL, not shown>"
