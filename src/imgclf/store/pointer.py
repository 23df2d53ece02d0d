"""The model registry's shared state in the database: version numbers and the current-model
pointer, changed in transactions, so that hosts sharing a models folder (over NFS, say) never
number two models the same or lose a promotion to a race.

- ``reserve_version``: the next number, taken by one insert while the pointer row is locked
  (hosts reserve one after another; the primary key refuses a number taken twice regardless).
  A run registers into the folder of the number it reserved before it started; a number
  whose run failed is never used again.
- ``promote_version`` / ``rollback_version``: the pointer row is read and updated in one
  transaction (row lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and ``expected``
  makes a promotion a compare-and-swap: a candidate the gate compared with v3 is not made
  current if v4 was promoted meanwhile (``registry.PointerMoved``).
- After each change ``models/current.json`` is rewritten from the row
  (``registry.write_pointer``): it is the mirror every reader reads, so predictions go on
  while the database is away.
  ``model_pointer`` rewrites it too when it differs (a process killed between the commit and
  the mirror). On first use the row is taken from the mirror (a registry from before this
  table).

Times are the database's clock.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from imgclf.model import registry
from imgclf.store.base import Connected
from imgclf.store.database import metadata
from imgclf.store.queue import HOST, clock

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("reserved_at", sa.Float, nullable=False),
    sa.Column("reserved_by", sa.String(255)),
)

model_pointer = sa.Table(
    "model_pointer",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.String(32)),
    sa.Column("history", sa.Text, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("changed_at", sa.Float, nullable=False),
)

#: ``expected`` of ``promote_version`` when any current version will do.
ANY = object()
#: Tries at a transaction that lost a race for a primary key (two hosts at once).
RACE_TRIES = 5


def _as_pointer(row) -> dict:
    return {
        "version": row.version,
        "history": json.loads(row.history),
        "generation": row.generation,
        "changed_at": datetime.fromtimestamp(row.changed_at, UTC).isoformat(),
    }


class ModelPointer(Connected):
    """Version numbers and the current-model pointer (see the module docstring)."""

    def _retrying(self, work):
        for attempt in range(RACE_TRIES):
            try:
                with self._transaction() as connection:
                    return work(connection)
            except sa_exc.IntegrityError:  # another host took the number or the row first
                if attempt == RACE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def reserve_version(self, models_dir: Path) -> str:
        """Reserve the next version number for a run about to train; returns its name."""

        def reserve(connection: Connection) -> str:
            self._locked_row(connection, models_dir)  # hosts reserve one after another
            highest = connection.execute(sa.select(sa.func.max(model_versions.c.number)))
            number = max(highest.scalar() or 0, registry.highest_number(models_dir)) + 1
            connection.execute(
                model_versions.insert().values(
                    number=number,
                    reserved_at=clock(connection),
                    reserved_by=f"{HOST}:{os.getpid()}",
                )
            )
            return registry.version_name(number)

        version = self._retrying(reserve)
        registry.reserved_version(models_dir, version)
        return version

    def _locked_row(self, connection: Connection, models_dir: Path):
        """The pointer row, locked for this transaction; created from the mirror if absent."""
        query = sa.select(model_pointer).where(model_pointer.c.id == 1).with_for_update()
        row = connection.execute(query).first()
        if row is None:
            mirror = registry.pointer(models_dir)
            connection.execute(
                model_pointer.insert().values(
                    id=1,
                    version=mirror.get("version"),
                    generation=0,
                    history=json.dumps(mirror.get("history", [])),
                    changed_at=clock(connection),
                )
            )
            row = connection.execute(query).first()
        return row

    def _change(self, models_dir: Path, decide) -> dict:
        """Read the locked pointer, let ``decide(pointer)`` give the new one, write it, then
        the mirror."""

        def change(connection: Connection) -> dict:
            current = _as_pointer(self._locked_row(connection, models_dir))
            new = decide(current)
            if new["version"] == current["version"] and new["history"] == current["history"]:
                return current
            connection.execute(
                model_pointer.update()
                .where(model_pointer.c.id == 1)
                .values(
                    version=new["version"],
                    history=json.dumps(new["history"]),
                    generation=current["generation"] + 1,
                    changed_at=clock(connection),
                )
            )
            return _as_pointer(connection.execute(sa.select(model_pointer)).first())

        pointer = self._retrying(change)
        mirror = registry.pointer(models_dir)
        if any(mirror.get(key) != pointer[key] for key in ("version", "history", "generation")):
            registry.write_pointer(models_dir, pointer)
        return pointer

    def model_pointer(self, models_dir: Path) -> dict:
        """The pointer as the database has it; the mirror is rewritten if it differs."""
        return self._change(models_dir, lambda current: current)

    def promote_version(self, models_dir: Path, version: str, expected=ANY) -> dict:
        """Make ``version`` current, if the current version is still ``expected`` (a version
        name or None; ``ANY``: whatever it is).

        Raises:
            RegistryError: no such version.
            PointerMoved: the current version is no longer ``expected``.
        """
        registry.metadata(models_dir, version)

        def decide(current: dict) -> dict:
            if expected is not ANY and current["version"] != expected:
                raise registry.PointerMoved(
                    f"the current model changed from {expected or 'none'} to "
                    f"{current['version'] or 'none'} while {version} was trained and compared "
                    f"with {expected or 'no model'}: not promoted; retrain, or promote "
                    f"{version} by hand after a look"
                )
            return registry.promoted(current, version)

        return self._change(models_dir, decide)

    def rollback_version(self, models_dir: Path) -> dict:
        """Make the previously current version current again.

        Raises:
            RegistryError: there is nothing to roll back to.
        """
        return self._change(models_dir, registry.rolled_back)
