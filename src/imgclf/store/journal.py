"""The prediction log's write-ahead journal: no answered prediction is lost to a database that
is away, locked, or to a killed process.

Each prediction row is appended to a local journal file (one JSON line, one ``write``) before
the request returns, so it is in the operating system's hands even if the process is killed a
moment later. The log writer inserts rows into the database in groups; a group's file
(a *segment*) is deleted once its rows are committed. While the database cannot take rows
(stopped, unreachable, locked past its timeout) the segments stay, are ``fsync``-ed once per
group, and are replayed, oldest first, when it is back. Replays insert with "on conflict do
nothing" on the prediction's id, so a segment replayed twice (the process died between the
commit and the delete) stores each row once.

Every process writing the log (an API worker) is one *instance*: its segments are named
``<instance>.<n>.jsonl`` and it holds an exclusive ``flock`` on ``<instance>.lock`` for its
life. A lock that can be taken belongs to a process that is gone: another instance adopts its
segments (replays and deletes them). A torn last line (a crash inside a write) is skipped and
counted. What a crash can lose: nothing a completed ``write`` put in the file unless the
machine itself goes down before the page cache reaches the disk; segments of an outage are
``fsync``-ed, so a machine crash loses at most the group being written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


class Journal:
    """One instance's journal segments in ``folder`` (created if missing)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._lock_fd = os.open(self.folder / f"{self.instance}.lock", os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._sequence = 0
        self._segment: Path | None = None
        self._fd: int | None = None
        self.torn_lines = 0

    # ------------------------------------------------------------------------- writing
    def append(self, rows: list[dict]) -> None:
        """Append rows to the open segment (one ``write``; no ``fsync``).

        Raises:
            OSError: the journal cannot be written (full disk): the rows stay in memory only.
        """
        if self._fd is None:
            self._sequence += 1
            self._segment = self.folder / f"{self.instance}.{self._sequence:09d}{SUFFIX}"
            self._fd = os.open(self._segment, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        data = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        os.write(self._fd, data.encode())

    def seal(self) -> Path | None:
        """Close the open segment and return it (None if nothing was written since the last
        seal); the next ``append`` opens a new one."""
        if self._fd is None:
            return None
        os.close(self._fd)
        self._fd, segment = None, self._segment
        return segment

    @staticmethod
    def sync(segment: Path) -> None:
        """Make a sealed segment durable (``fsync`` of the file and of its folder)."""
        descriptor = os.open(segment, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        folder = os.open(segment.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    # ------------------------------------------------------------------------- reading
    def read(self, segment: Path) -> list[dict]:
        """The rows of a segment; a line that does not parse (torn by a crash) is skipped."""
        rows = []
        with open(segment, "rb") as lines:
            for line in lines:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    self.torn_lines += 1
                    log.warning("journal %s: skipped a torn line (%d bytes)", segment, len(line))
        return rows

    def orphans(self) -> Iterator[tuple[str, int]]:
        """Instances whose process is gone, each locked for us: ``(instance, lock fd)``.

        The caller replays their segments and then calls ``release``."""
        for lock_file in sorted(self.folder.glob("*.lock")):
            instance = lock_file.name[: -len(".lock")]
            if instance == self.instance:
                continue
            try:
                descriptor = os.open(lock_file, os.O_RDWR)
            except FileNotFoundError:  # another instance adopted it a moment ago
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive
                os.close(descriptor)
                continue
            yield instance, descriptor

    def segments(self, instance: str | None = None) -> list[Path]:
        """Sealed segments of ``instance`` (default: this one), oldest first."""
        instance = instance or self.instance
        found = sorted(self.folder.glob(f"{instance}.*{SUFFIX}"))
        return [path for path in found if path != self._segment or self._fd is None]

    def release(self, instance: str, descriptor: int) -> None:
        """Forget an adopted instance whose segments are all replayed."""
        (self.folder / f"{instance}.lock").unlink(missing_ok=True)
        os.close(descriptor)

    def replay(self, segments: list[Path], insert: Callable[[list[dict]], None]) -> int:
        """Insert each segment's rows (oldest first), deleting each once committed; returns the
        rows replayed. Stops at the first failure (``insert`` raises), keeping the rest."""
        replayed = 0
        for segment in segments:
            rows = self.read(segment)
            if rows:
                insert(rows)
            segment.unlink(missing_ok=True)
            replayed += len(rows)
        return replayed

    def pending_rows(self) -> int:
        """Rows in sealed segments not yet replayed (this instance's and orphans')."""
        total = 0
        for segment in self.folder.glob(f"*{SUFFIX}"):
            if segment == self._segment and self._fd is not None:
                continue
            try:
                with open(segment, "rb") as lines:
                    total += sum(1 for _ in lines)
            except FileNotFoundError:
                continue
        return total

    def close(self) -> None:
        """Close the open segment and drop this instance's lock (its segments stay for
        adoption if any are left)."""
        self.seal()
        if not self.segments():
            (self.folder / f"{self.instance}.lock").unlink(missing_ok=True)
        os.close(self._lock_fd)
