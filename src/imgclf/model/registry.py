"""Versioned model registry: immutable ``models/<version>/`` folders and an atomic pointer.

Layout::

    models/v0001/model.keras     the model (read-only once written)
    models/v0001/metadata.json   version, time, parent, parameters, data fingerprint, classes,
                                 input size and colour mode, test metrics, report path
    models/current.json          {"version": "v0003", "history": ["v0001", "v0002"]}

A version is written into a hidden temporary folder and renamed into place, so readers never
see half of one. The pointer is replaced with ``os.replace``; every change to it happens under
a file lock so that concurrent promotions and rollbacks serialise.

Command line: ``python -m imgclf.model.registry list|show [VERSION]|promote VERSION|rollback``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
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


class RegistryError(ValueError):
    """A registry operation cannot be done; the message says which version or file."""


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


def _remove_abandoned_staging(models_dir: Path) -> None:
    """Remove staging folders (``.vNNNN-*``) left by a process killed while registering (a
    cancelled job, an OOM kill). Called under the registry lock, which every registration
    holds while it writes, so none of them is in use."""
    for folder in models_dir.glob(".v*-*"):
        if folder.is_dir() and VERSION_PATTERN.match(folder.name[1:].split("-")[0]):
            shutil.rmtree(folder, ignore_errors=True)


def register(models_dir: Path, model_file: Path, info: dict) -> str:
    """Store a model file and its metadata as the next version; returns the version name.

    The model file is copied (the original is left alone). ``version`` and ``created_at`` are
    added to ``info``; the files are made read-only.
    """
    with _lock(models_dir):
        _remove_abandoned_staging(models_dir)
        existing = list_versions(models_dir)
        number = int(VERSION_PATTERN.match(existing[-1]).group(1)) + 1 if existing else 1
        version = f"v{number:04d}"
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=models_dir))
        try:
            shutil.copyfile(model_file, staging / MODEL_FILE)
            record = {**info, "version": version, "created_at": datetime.now(UTC).isoformat()}
            (staging / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
            for path in staging.iterdir():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.rename(staging, models_dir / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return version


def promote(models_dir: Path, version: str) -> dict:
    """Point ``current`` at a version (the previous one goes onto the rollback history).

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
        history = pointer["history"] + ([pointer["version"]] if pointer["version"] else [])
        pointer = {
            "version": version,
            "history": history,
            "changed_at": datetime.now(UTC).isoformat(),
        }
        write_json_atomic(models_dir / POINTER_FILE, pointer)
    return pointer


def rollback(models_dir: Path) -> dict:
    """Point ``current`` back at the version that was current before it.

    Returns:
        The new pointer.

    Raises:
        RegistryError: there is nothing to roll back to.
    """
    with _lock(models_dir):
        pointer = _read_pointer(models_dir)
        if not pointer["history"]:
            raise RegistryError(
                f"nothing to roll back to: {pointer['version'] or 'no model'} is the first "
                "promoted version"
            )
        pointer = {
            "version": pointer["history"][-1],
            "history": pointer["history"][:-1],
            "changed_at": datetime.now(UTC).isoformat(),
        }
        write_json_atomic(models_dir / POINTER_FILE, pointer)
    return pointer


def _describe(models_dir: Path, version: str, current: str | None) -> str:
    info = metadata(models_dir, version)
    test = info.get("test_metrics", {})
    mark = "*" if version == current else " "
    return (
        f"{mark} {version}  {info.get('created_at', '')[:19]}  "
        f"acc={test.get('accuracy', float('nan')):.4f}  "
        f"f1={test.get('f1_macro', float('nan')):.4f}"
        f"  classes={len(info.get('class_names', []))}  parent={info.get('parent_version')}"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints errors without a traceback and returns 1 on failure."""
    from imgclf.config import get_settings

    parser = argparse.ArgumentParser(
        prog="python -m imgclf.model.registry", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list versions (* marks the current one)")
    show = commands.add_parser("show", help="print a version's metadata (default: current)")
    show.add_argument("version", nargs="?")
    commands.add_parser("promote", help="make a version current").add_argument("version")
    commands.add_parser("rollback", help="go back to the previously current version")
    args = parser.parse_args(argv)
    models_dir = get_settings().models_dir
    try:
        current = current_version(models_dir)
        if args.command == "list":
            for version in list_versions(models_dir):
                print(_describe(models_dir, version, current))
        elif args.command == "show":
            version = args.version or current
            if version is None:
                raise RegistryError("no current model; train one with `make train`")
            print(json.dumps(metadata(models_dir, version), indent=2))
        elif args.command == "promote":
            print(f"current -> {promote(models_dir, args.version)['version']}")
        else:
            print(f"current -> {rollback(models_dir)['version']}")
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
