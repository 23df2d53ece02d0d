"""The audit trail of curation: who changed the uploaded data, what, when, and how it ended.

One row per curation request that reached the data (``imgclf.data.curation``): written ``started``
before any file changes, then ``done`` (with the counts), ``refused`` (the request named
something that does not exist, or the change would clash) or ``failed`` (an error; nothing
was changed). A row left ``started`` means the process died mid-way; the next curation or
upload completed or dropped the change (see ``curation.recover``).

Who: the admin token is never stored; ``actor`` is the first 8 hex digits of its SHA-256
(enough to tell tokens apart after a rotation, useless to recover one), ``client`` the
address the request came from (and ``X-Forwarded-For``, as sent, when a proxy added one).

The table lives on the store's ``metadata`` and is made by migration ``0004``.
"""

from __future__ import annotations

import hashlib
import json
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imgclf.store.database import metadata

OUTCOMES = ("started", "done", "refused", "failed")
OPERATIONS = ("delete-batch", "delete-class", "rename-class", "delete-file", "relabel-file")

curation_audit = sa.Table(
    "curation_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("operation", sa.String(32), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("new_name", sa.String(255)),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("images", sa.Integer),
    sa.Column("batches", sa.Integer),
    sa.Column("detail", sa.Text),
    sa.Column("actor", sa.String(16)),
    sa.Column("client", sa.String(255)),
    sa.Index("curation_audit_time", "created_at"),
)


def token_id(token: str | None) -> str | None:
    """A short, non-reversible name for a token: the first 8 hex digits of its SHA-256."""
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class AuditLog:
    """Writes and reads ``curation_audit`` through an engine (``Store.engine``)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def start(
        self,
        operation: str,
        target: str,
        new_name: str | None = None,
        actor: str | None = None,
        client: str | None = None,
    ) -> int:
        """Record a curation about to change the data; returns the row's id."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation {operation!r}: expected one of {OPERATIONS}")
        row = {
            "created_at": time.time(),
            "operation": operation,
            "target": target[:255],
            "new_name": new_name[:255] if new_name is not None else None,
            "outcome": "started",
            "actor": actor,
            "client": (client or "")[:255] or None,
        }
        with self.engine.begin() as connection:
            inserted = connection.execute(curation_audit.insert().values(**row))
            return inserted.inserted_primary_key[0]

    def finish(
        self, entry_id: int, outcome: str, result: dict | None = None, error: str | None = None
    ) -> None:
        """Record how a curation ended: ``done`` with its ``result``, else with the error."""
        if outcome not in OUTCOMES[1:]:
            raise ValueError(f"outcome {outcome!r}: expected one of {OUTCOMES[1:]}")
        result = result or {}
        values = {
            "finished_at": time.time(),
            "outcome": outcome,
            "images": result.get("images"),
            "batches": len(result["batches"]) if "batches" in result else None,
            "detail": json.dumps(result if outcome == "done" else {"error": error}),
        }
        with self.engine.begin() as connection:
            connection.execute(
                curation_audit.update().where(curation_audit.c.id == entry_id).values(**values)
            )

    def recent(self, limit: int = 50) -> list[dict]:
        """The latest entries, newest first; ``detail`` is the result, or ``{"error": ...}``."""
        query = curation_audit.select().order_by(curation_audit.c.id.desc()).limit(limit)
        reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        with reader.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        for row in rows:
            row["detail"] = json.loads(row["detail"]) if row["detail"] else {}
        return rows
