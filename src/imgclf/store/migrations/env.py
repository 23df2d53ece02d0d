"""Alembic's environment: migrations run on the connection ``imgclf.store.migrations``
passes in."""

from alembic import context

from imgclf.store import (
    audit,  # noqa: F401  (its table is on the store's metadata)
    pointer,  # noqa: F401  (its tables too)
)
from imgclf.store.database import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
