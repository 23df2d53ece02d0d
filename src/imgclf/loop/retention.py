"""The images of recent predictions, kept for a bounded time and count so that feedback on a
prediction can become a labelled training image.

Images are stored by content hash under ``<data_dir>/retained/<sha256[:2]>/<sha256>`` (the
same image predicted twice is stored once, and its time refreshed), written to a temporary name
and renamed, from a background thread: the request that predicted never waits for the disk.
Pruning removes images older than ``RETAIN_HOURS`` and then the oldest beyond
``RETAIN_IMAGES``; any process may prune (several API replicas share the folder).
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

from imgclf.data import imagebytes

log = logging.getLogger(__name__)

#: Images waiting to be written; beyond this, new ones are not kept (and counted).
QUEUE_LIMIT = 256
#: Prune at most this often (seconds) per process.
PRUNE_EVERY_S = 30.0


#: The folder under ``DATA_DIR`` where the API keeps prediction images
KEPT_FOLDER = "retained"


class ImageGone(LookupError):
    """The image is not kept (retention is off, or it was pruned); the message says which."""


class ImageKeeper:
    """Keeps prediction images under ``folder`` (see the module docstring)."""

    def __init__(
        self, folder: Path, max_images: int, max_age_s: float, max_bytes: int | None = None
    ):
        self.folder = folder
        self.max_images = max_images
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.dropped = 0
        self.refused = 0  # images not kept: their end not found, or alone over the budget
        self._bytes: int | None = None  # what this process believes is kept (pruning counts)
        self._queue: queue.Queue = queue.Queue(QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_prune = 0.0

    @property
    def enabled(self) -> bool:
        return self.max_images > 0 and self.max_age_s > 0

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        return self.folder / digest[:2] / digest

    def keep(self, digest: str, payload: bytes, image_format: str | None = None) -> None:
        """Queue an image for keeping (never blocks; a full queue drops it). Only the image
        itself is kept: bytes after its end (``imagebytes``) are not; with ``image_format``
        None the payload is kept as it is (a caller that trimmed it)."""
        if not self.enabled:
            return
        if image_format is not None:
            try:
                payload = imagebytes.trimmed(payload, image_format)
            except imagebytes.Malformed as malformed:
                self.refused += 1
                log.warning("a prediction image is not kept: %s", malformed)
                return
        if self.max_bytes is not None and len(payload) > self.max_bytes:
            self.refused += 1
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="keeper", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((digest, payload))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every image queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def read(self, digest: str) -> bytes:
        """The kept image with this hash.

        Raises:
            ImageGone: retention is off, or the image was pruned (or never kept).
        """
        if not self.enabled:
            raise ImageGone("prediction images are not kept (RETAIN_IMAGES or RETAIN_HOURS is 0)")
        try:
            return self.path(digest).read_bytes()
        except (FileNotFoundError, ValueError):
            raise ImageGone(
                f"the image is no longer kept: images are kept for {self.max_age_s / 3600:g} h "
                f"and at most {self.max_images} of them (RETAIN_HOURS, RETAIN_IMAGES)"
            ) from None

    def has(self, digest: str | None) -> bool:
        try:
            return bool(digest) and self.path(digest).is_file()
        except ValueError:
            return False

    def write(self, digest: str, payload: bytes) -> Path:
        """Store one image now (atomically); an image already kept only has its time renewed."""
        target = self.path(digest)
        if target.is_file():
            os.utime(target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".keep-", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        if self._bytes is not None:
            self._bytes += len(payload)
        return target

    def over_budget(self) -> bool:
        """Whether what is kept may exceed ``max_bytes`` (then ``prune`` evicts now)."""
        return self.max_bytes is not None and (self._bytes is None or self._bytes > self.max_bytes)

    def prune(self, now: float | None = None) -> int:
        """Remove images older than the age limit, then the oldest beyond the count, then the
        oldest until the rest fits ``max_bytes``; returns how many were removed."""
        now = time.time() if now is None else now
        if not self.folder.is_dir():
            return 0
        kept = []
        removed = 0
        for path in self.folder.glob("??/*"):
            if path.name.startswith("."):
                continue
            try:
                status = path.stat()
            except FileNotFoundError:  # another process pruned it
                continue
            if now - status.st_mtime > self.max_age_s:
                path.unlink(missing_ok=True)
                removed += 1
            else:
                kept.append((status.st_mtime, status.st_size, path))
        kept.sort()
        excess = max(0, len(kept) - self.max_images)
        total = sum(size for _, size, _ in kept[excess:])
        # evicting for bytes goes down to 90 % of the budget, so that the next writes do not
        # each start a scan of the folder
        target = (
            None if self.max_bytes is None or total <= self.max_bytes else self.max_bytes * 0.9
        )
        for index, (_, size, path) in enumerate(kept):
            if index >= excess and (target is None or total <= target):
                break
            path.unlink(missing_ok=True)
            removed += 1
            if index >= excess:
                total -= size
        self._bytes = total
        return removed

    def _run(self) -> None:
        while True:
            digest, payload = self._queue.get()
            try:
                self.write(digest, payload)
                if self.over_budget() or time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                    self._last_prune = time.monotonic()
                    self.prune()
            except Exception:  # a full disk: serving goes on, the image is not kept
                log.exception("keeping a prediction image failed")
            finally:
                self._queue.task_done()
