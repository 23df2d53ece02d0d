"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text to a temporary file in the same folder, flush it, then rename it over ``path``.

    Returns:
        ``path``.
    """
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(handle, 0o644)  # mkstemp makes 0600; other readers (a web server) need more
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON with ``write_text_atomic``; returns ``path``."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))
