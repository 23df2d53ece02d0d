"""What every change of ``data/uploads/`` shares: the lock it holds, the rule a class name
follows and the error a refused change raises. ``uploads`` (adding batches) and ``curation``
(deleting and renaming) both use it, and neither needs the other for it."""

from __future__ import annotations

import re
from pathlib import Path

from filelock import FileLock

from imgclf.config import IGNORED_FILE_NAMES

#: Class names: letters, digits, space, ``_ - .``, starting with a letter or digit, never two
#: dots in a row (so never ``..``). The API's OpenAPI document states the same pattern.
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9](\.?[A-Za-z0-9 _-])*\.?$")
MAX_LABEL_LENGTH = 64
#: The class-name rule in words (``LABEL_PATTERN``), for messages.
LABEL_RULE = (
    "use letters, digits, spaces, '_', '-' and '.', starting with a letter or digit "
    "(no '/', '\\' or '..')"
)
#: The file lock every change of ``data/uploads/`` holds: uploads and curation alike.
LOCK_FILE = ".upload.lock"
LOCK_TIMEOUT_S = 120


def lock(uploads_dir: Path) -> FileLock:
    """The lock under which a batch is added, changed or removed (``uploads_dir`` must exist)."""
    return FileLock(str(uploads_dir / LOCK_FILE), timeout=LOCK_TIMEOUT_S)


class UploadError(ValueError):
    """The upload as a whole is refused; nothing was stored. The message says why."""


def validate_label(label: str | None) -> str:
    """Return a cleaned class name.

    Raises:
        UploadError: missing, too long, or holding characters that could form a path.
    """
    label = (label or "").strip()
    if not label:
        raise UploadError("a label is required: the class of the uploaded images")
    if len(label) > MAX_LABEL_LENGTH:
        raise UploadError(f"label is {len(label)} characters long; at most {MAX_LABEL_LENGTH}")
    if not LABEL_PATTERN.match(label):
        raise UploadError(f"label {label!r} is not allowed: {LABEL_RULE}")
    if label.lower() in IGNORED_FILE_NAMES:  # a folder every reader of the data skips
        raise UploadError(f"label {label!r} is not allowed: it names a file that is ignored")
    return label
