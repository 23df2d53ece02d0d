"""Versioned model registry: immutable ``models/<version>/`` folders and an atomic pointer.

Layout::

    models/v0001/model.keras     the model (read-only once written)
    models/v0001/metadata.json   version, time, parent, parameters, data fingerprint, classes,
                                 input size and colour mode, test metrics, report path
    models/current.json          {"version": "v0003", "history": ["v0001", "v0002"]}

A version is written into a hidden temporary folder and renamed into place, so readers never
see half of one.

Where the service runs (API, worker, ``make train``), version numbers and the pointer live in
the database (``imgclf.store.pointer``): a number is reserved in a transaction before training
starts (``reserved_version`` marks it here too) and the pointer is changed by compare-and-swap;
``current.json`` is then its mirror, written (fsync-ed, atomically) after each change, which
every reader reads, so serving goes on while the database is away. Without a database (a
library call, a test) ``register``, ``promote`` and ``rollback`` below number and point under a
file lock on this folder: one machine only.

Command line: ``imgclf models list|show [VERSION]|promote VERSION|rollback``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from imgclf.files import write_json_atomic

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
POINTER_FILE = "current.json"
LOCK_FILE = ".registry.lock"
VERSION_PATTERN = re.compile(r"^v(\d{4,})$")


RESERVED_PREFIX = ".reserved-"


class RegistryError(ValueError):
    """A registry operation cannot be done; the message says which version or file."""


class PointerMoved(RegistryError):
    """The current model changed after a candidate was compared with it: it is not promoted."""


def _lock(models_dir: Path) -> FileLock:
    models_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(models_dir / LOCK_FILE), timeout=60)


def list_versions(models_dir: Path) -> list[str]:
    """Return the version names present, oldest first."""
    if not models_dir.is_dir():
        return []
    found = [p.name for p in models_dir.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name)]
    return sorted(found, key=lambda name: int(VERSION_PATTERN.match(name).group(1)))


def metadata(models_dir: Path, version: str) -> dict:
    """Return a version's metadata.

    Raises:
        RegistryError: no such version.
    """
    path = models_dir / version / METADATA_FILE
    if not VERSION_PATTERN.match(version) or not path.is_file():
        raise RegistryError(f"model version {version!r} not found in {models_dir}")
    return json.loads(path.read_text())


def attachment(models_dir: Path, version: str, name: str) -> bytes | None:
    """A file kept beside a version's model (None when that version has none)."""
    path = models_dir / version / name
    return path.read_bytes() if VERSION_PATTERN.match(version) and path.is_file() else None


def model_path(models_dir: Path, version: str) -> Path:
    """Return the path of a version's model file (checking that the version exists)."""
    metadata(models_dir, version)
    return models_dir / version / MODEL_FILE


def _read_pointer(models_dir: Path) -> dict:
    path = models_dir / POINTER_FILE
    if not path.is_file():
        return {"version": None, "history": []}
    return json.loads(path.read_text())


def pointer(models_dir: Path) -> dict:
    """Return the pointer: ``{"version": ..., "history": [...], "changed_at": ...}``."""
    return _read_pointer(models_dir)


def current_version(models_dir: Path) -> str | None:
    """Return the version the pointer names, or None when no model was promoted yet."""
    return _read_pointer(models_dir).get("version")


def version_name(number: int) -> str:
    return f"v{number:04d}"


def highest_number(models_dir: Path) -> int:
    """The highest version number used in this folder, registered or reserved (0: none)."""
    numbers = [int(VERSION_PATTERN.match(v).group(1)) for v in list_versions(models_dir)]
    if models_dir.is_dir():
        for marker in models_dir.glob(f"{RESERVED_PREFIX}v*"):
            match = VERSION_PATTERN.match(marker.name.removeprefix(RESERVED_PREFIX))
            numbers += [int(match.group(1))] if match else []
    return max(numbers, default=0)


def reserved_version(models_dir: Path, version: str) -> None:
    """Mark ``version`` as taken (its number was reserved in the database), so that a
    registration without the database never numbers a model the same."""
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{RESERVED_PREFIX}{version}").touch()


def write_pointer(models_dir: Path, pointer: dict) -> dict:
    """Replace ``current.json`` (fsync-ed, then renamed over the old one); returns ``pointer``."""
    models_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(models_dir / POINTER_FILE, pointer)
    return pointer


def _remove_abandoned_staging(models_dir: Path) -> None:
    """Remove staging folders (``.vNNNN-*``) left by a process killed while registering (a
    cancelled job, an OOM kill). Called under the registry lock, which every registration
    holds while it writes, so none of them is in use."""
    for folder in models_dir.glob(".v*-*"):
        if folder.is_dir() and VERSION_PATTERN.match(folder.name[1:].split("-")[0]):
            shutil.rmtree(folder, ignore_errors=True)


def register(
    models_dir: Path,
    model_file: Path,
    info: dict,
    version: str | None = None,
    attachments: dict[str, bytes] | None = None,
) -> str:
    """Store a model file and its metadata as ``version`` (one reserved in the database) or
    the next number, with ``attachments`` (file name: bytes, e.g. the unknown detector's
    arrays) beside them; returns the version name.

    The model file is copied (the original is left alone). ``version`` and ``created_at`` are
    added to ``info``; the files are made read-only.

    Raises:
        RegistryError: ``version`` is not a version name, or is registered already.
    """
    with _lock(models_dir):
        _remove_abandoned_staging(models_dir)
        if version is None:
            version = version_name(highest_number(models_dir) + 1)
        elif not VERSION_PATTERN.match(version) or (models_dir / version).exists():
            raise RegistryError(f"cannot register as {version!r}: not free in {models_dir}")
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=models_dir))
        try:
            shutil.copyfile(model_file, staging / MODEL_FILE)
            record = {**info, "version": version, "created_at": datetime.now(UTC).isoformat()}
            (staging / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
            for name, payload in (attachments or {}).items():
                if name in (MODEL_FILE, METADATA_FILE) or Path(name).name != name:
                    raise RegistryError(f"attachment name {name!r}: a plain file name, not ours")
                (staging / name).write_bytes(payload)
            for path in staging.iterdir():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.rename(staging, models_dir / version)
            (models_dir / f"{RESERVED_PREFIX}{version}").unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return version


def promoted(pointer: dict, version: str) -> dict:
    """The pointer after promoting ``version`` (the one current goes onto the history)."""
    if pointer.get("version") == version:
        return pointer
    history = pointer["history"] + ([pointer["version"]] if pointer.get("version") else [])
    return {"version": version, "history": history, "changed_at": datetime.now(UTC).isoformat()}


def rolled_back(pointer: dict) -> dict:
    """The pointer after going back to the version current before.

    Raises:
        RegistryError: there is nothing to roll back to.
    """
    if not pointer["history"]:
        raise RegistryError(
            f"nothing to roll back to: {pointer.get('version') or 'no model'} is the first "
            "promoted version"
        )
    return {
        "version": pointer["history"][-1],
        "history": pointer["history"][:-1],
        "changed_at": datetime.now(UTC).isoformat(),
    }


def promote(models_dir: Path, version: str) -> dict:
    """Point ``current`` at a version (the previous one goes onto the rollback history), under
    the file lock (no database: see the module docstring).

    Returns:
        The new pointer ``{"version": ..., "history": [...]}``.

    Raises:
        RegistryError: no such version.
    """
    metadata(models_dir, version)
    with _lock(models_dir):
        pointer = _read_pointer(models_dir)
        if pointer["version"] == version:
            return pointer
        return write_pointer(models_dir, promoted(pointer, version))


def rollback(models_dir: Path) -> dict:
    """Point ``current`` back at the version that was current before it, under the file lock.

    Returns:
        The new pointer.

    Raises:
        RegistryError: there is nothing to roll back to.
    """
    with _lock(models_dir):
        return write_pointer(models_dir, rolled_back(_read_pointer(models_dir)))
