"""Bulk upload of labelled images: validate, deduplicate, store atomically under data/uploads/.

An upload is either many files with one label, or one zip laid out as ``<class>/<file>``
(optionally inside one top folder). Every file is decoded with the same function training
uses, so an accepted file is one the retrain notebook can read. Files are stored under their
content hash (``data/uploads/<batch>/<class>/<sha256[:16]>.<ext>``), never under a name the client
chose. The batch is written into a hidden staging folder and renamed into place under a file
lock, so a reader (the retrain job) sees all of a batch or none of it, and two concurrent
uploads of the same image store it once.

A zip that is hostile as a whole (``..`` or absolute paths, links, nested archives, too many
entries, too much uncompressed data, a suspicious compression ratio) is refused before any
entry is decoded: ``UploadError``. Single bad images are reported, with a reason, and skipped.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from PIL import Image

from imgclf.config import UploadLimits
from imgclf.data import audit, curation, folders, manifest
from imgclf.data.preprocessing import ImageDecodeError, load_image
from imgclf.data.uploadrules import (  # noqa: F401  (the upload API's names)
    LABEL_PATTERN,
    LABEL_RULE,
    MAX_LABEL_LENGTH,
    UploadError,
    lock,
    validate_label,
)

ARCHIVE_ENDINGS = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".jar")
FORMAT_ENDINGS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "BMP": "bmp", "GIF": "gif"}
FORMAT_ENDINGS["WEBP"] = "webp"


@dataclass
class UploadReport:
    """What happened to each file of an upload."""

    batch: str | None = None
    accepted: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    #: held out: near-duplicates of test images (``audit``), with the test file
    leaks: list[dict] = field(default_factory=list)
    #: stored, but nearly the same picture as a training image or another of this upload
    near_duplicates: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "batch": self.batch,
            "counts": {
                "accepted": len(self.accepted),
                "duplicate": len(self.duplicates),
                "rejected": len(self.rejected),
                "leak": len(self.leaks),
                "near_duplicate": len(self.near_duplicates),
            },
            "by_class": _count_by_class(self.accepted),
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "leaks": self.leaks,
            "near_duplicates": self.near_duplicates,
        }


def _count_by_class(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    return dict(sorted(counts.items()))


def _check_entry(info: zipfile.ZipInfo, limits: UploadLimits) -> None:
    """Refuse a hostile zip entry: an absolute or Windows path, '..', a link, a nested archive,
    a file too large or compressed beyond ``max_ratio`` (a zip bomb)."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise UploadError(f"zip entry {name!r}: absolute or Windows paths are not allowed")
    if ".." in PurePosixPath(name).parts:
        raise UploadError(f"zip entry {name!r}: '..' in a path is not allowed")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"zip entry {name!r}: links are not allowed")
    if name.lower().endswith(ARCHIVE_ENDINGS):
        raise UploadError(f"zip entry {name!r}: nested archives are not allowed")
    if info.file_size > limits.max_file_bytes:
        raise UploadError(
            f"zip entry {name!r}: {info.file_size} bytes uncompressed; "
            f"at most {limits.max_file_bytes} per file"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > 1024 and ratio > limits.max_ratio:
        raise UploadError(
            f"zip entry {name!r}: compression ratio {ratio:.0f} is above "
            f"{limits.max_ratio:.0f} (a zip bomb?)"
        )


#: What reading a corrupt or unsupported zip member raises.
UNREADABLE_MEMBER = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)


def read_zip(payload: bytes, limits: UploadLimits) -> list[tuple[str, str, bytes]]:
    """Return ``(label, name, bytes)`` for each image of a zip laid out as ``<class>/<file>``.

    Raises:
        UploadError: not a zip, or hostile or malformed as a whole (see the module docstring).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except (zipfile.BadZipFile, ValueError):
        raise UploadError("the file is not a readable zip archive") from None
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if len(entries) > limits.max_files:
        raise UploadError(f"the zip holds {len(entries)} files; at most {limits.max_files}")
    total = 0
    paths = []
    for info in entries:
        _check_entry(info, limits)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UploadError(
                f"the zip holds more than {limits.max_total_bytes} bytes uncompressed"
            )
        path = PurePosixPath(info.filename)
        parts = [p for p in path.parts if p]
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue  # operating-system clutter (.DS_Store, __MACOSX/)
        paths.append((info, parts))
    if not paths:
        raise UploadError("the zip holds no files; expected <class>/<image> entries")
    tops = {parts[0] for _, parts in paths}
    strip = 1 if len(tops) == 1 and all(len(parts) == 3 for _, parts in paths) else 0
    files = []
    for info, parts in paths:
        parts = parts[strip:]
        if len(parts) != 2:
            raise UploadError(
                f"zip entry {info.filename!r}: expected <class>/<image> (one folder per class)"
            )
        try:
            with archive.open(info) as member:
                content = member.read(limits.max_file_bytes + 1)
        except UNREADABLE_MEMBER as error:  # a bad CRC, a broken deflate stream, encryption
            raise UploadError(
                f"zip entry {info.filename!r}: its data cannot be read ({type(error).__name__}: "
                f"{str(error)[:120]}); nothing of this zip was stored"
            ) from None
        if content[:4] == b"PK\x03\x04":
            raise UploadError(f"zip entry {info.filename!r}: nested archives are not allowed")
        files.append((parts[0], parts[1], content))
    return files


class HashIndex:
    """SHA-256 of every image already in the training set and the uploads.

    Hashes are cached by (path, size, modification time), so only new files are read again.
    """

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._cache: dict[Path, tuple[int, int, str]] = {}
        #: the images' fingerprints, for near-duplicates and leaks (``audit``)
        self.content = audit.ContentIndex(data_dir)

    def hashes(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        seen: dict[Path, tuple[int, int, str]] = {}
        roots = [self.data_dir / "train", self.data_dir / "test", self.data_dir / "uploads"]
        for root in roots:
            if not root.is_dir():
                continue
            for path in root.rglob("*"):
                if any(part.startswith(".") for part in path.relative_to(root).parts):
                    continue
                if not path.is_file() or not folders.is_image_name(path.name):
                    continue
                info = path.stat()
                cached = self._cache.get(path)
                if cached is None or cached[:2] != (info.st_size, info.st_mtime_ns):
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    cached = (info.st_size, info.st_mtime_ns, digest)
                seen[path] = cached
                found.setdefault(cached[2], path)
        self._cache = seen  # files deleted or moved since (curation) are forgotten
        return found


def _check_image(content: bytes, name: str, limits: UploadLimits) -> str:
    """Decode fully (as training would) and return the file ending for its real format."""
    if len(content) > limits.max_file_bytes:
        raise ImageDecodeError(f"{len(content)} bytes; at most {limits.max_file_bytes} per file")
    load_image(content, 8, "grayscale", max_pixels=limits.max_pixels)
    with Image.open(io.BytesIO(content)) as image:
        return FORMAT_ENDINGS.get(image.format or "", "png")


def hash_fraction(digest: str) -> float:
    """A number in [0, 1) drawn from a SHA-256 hex digest: the same image, the same number."""
    return int(digest[:13], 16) / 16**13


def split_counts(data_dir: Path) -> dict[str, dict[str, int]]:
    """Images per class in each split: ``train/`` and ``test/`` plus the uploads' shares."""
    counts: dict[str, dict[str, int]] = {}
    for split in folders.SPLITS:
        folder = data_dir / split
        for class_dir in folders.class_folders(folder) if folder.is_dir() else []:
            found = sum(1 for p in class_dir.rglob("*") if folders.is_image_name(p.name))
            counts.setdefault(class_dir.name, dict.fromkeys(folders.SPLITS, 0))[split] += found
        uploaded = folders.discover_uploads(data_dir / "uploads", split)
        for name, found in (uploaded.counts() if uploaded else {}).items():
            counts.setdefault(name, dict.fromkeys(folders.SPLITS, 0))[split] += found
    return counts


def assign_splits(
    fresh: dict[str, str], counts: dict[str, dict[str, int]], test_share: float, min_test: int
) -> dict[str, str]:
    """Give each new image (sha256 -> label) to ``train`` or ``test``, once and for all.

    Images are taken in hash order, so the result depends only on the images and what the
    data already holds. A class's first image trains (a class must be trained on to be
    tested); after that an image tests when its hash falls in the ``test_share``; and while a
    class has fewer than ``min_test`` test images, every image that would keep its test share
    below half of its training share tests too, so that a small new class gets the test
    images the gate asks for. The choice is stored in the batch's manifest: an image never
    moves between splits.
    """
    counts = {name: dict(split) for name, split in counts.items()}
    chosen = {}
    for digest in sorted(fresh):
        tally = counts.setdefault(fresh[digest], dict.fromkeys(folders.SPLITS, 0))
        if tally["train"] == 0:
            split = "train"
        elif hash_fraction(digest) < test_share:
            split = "test"
        elif tally["test"] < min_test and tally["test"] < tally["train"]:
            split = "test"
        else:
            split = "train"
        tally[split] += 1
        chosen[digest] = split
    return chosen


def _validated(
    files: list[tuple[str, str, bytes]], limits: UploadLimits, report: UploadReport
) -> dict[str, tuple[str, str, str, bytes]]:
    """Decode every file; returns sha256 -> (label, name, ending, bytes) of the readable ones,
    once each, and reports the unreadable ones and the repeats within this upload."""
    labels = {label: validate_label(label) for label in {label for label, _, _ in files}}
    candidates: dict[str, tuple[str, str, str, bytes]] = {}
    for label, name, content in files:
        label = labels[label]
        row = {"file": name, "label": label}
        try:
            ending = _check_image(content, name, limits)
        except ImageDecodeError as error:
            reason = str(error).removeprefix(f"{name}: ").removeprefix("image: ")
            report.rejected.append({**row, "reason": reason})
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest in candidates:
            report.duplicates.append({**row, "sha256": digest, "duplicate_of": "this upload"})
            continue
        candidates[digest] = (label, name, ending, content)
    return candidates


def new_batch_name() -> str:
    """A time stamp and a random suffix (``audit.BATCH_NAME``)."""
    return f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _write_batch(
    uploads_dir: Path,
    batch: str,
    fresh: dict[str, tuple[str, str, str, bytes]],
    splits: dict[str, str],
    report: UploadReport,
) -> None:
    """Write the new images and their manifest into a hidden folder and rename it into place
    as ``batch``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{batch}-", dir=uploads_dir))
    try:
        rows = []
        for digest, (label, name, ending, content) in fresh.items():
            target = staging / label / f"{digest[:16]}.{ending}"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(content)
            rows.append(manifest.row(name, label, digest, batch, target.name, splits[digest]))
            report.accepted.append(rows[-1])
        manifest.write(staging, rows)
        staging.chmod(0o755)
        os.rename(staging, uploads_dir / batch)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def store_upload(
    files: list[tuple[str, str, bytes]],
    uploads_dir: Path,
    index: HashIndex,
    limits: UploadLimits | None = None,
    test_share: float = 0.2,
    min_test: int = 5,
) -> UploadReport:
    """Validate and store ``(label, file name, bytes)`` triples as one new batch.

    Each accepted image is given to the training or the test share (``assign_splits``); the
    answer and the batch's manifest say which. A near-copy of a test image is held out as a
    leak, and near-copies of training images are listed (``audit``).

    Returns:
        The report; ``batch`` is None when nothing was accepted (then nothing was written).

    Raises:
        UploadError: no files, too many files, or a label that is not allowed.
    """
    limits = limits or UploadLimits()
    if not files:
        raise UploadError("no files in the upload")
    if len(files) > limits.max_files:
        raise UploadError(f"{len(files)} files in one upload; at most {limits.max_files}")
    report = UploadReport()
    candidates = _validated(files, limits, report)
    if not candidates:
        return report
    uploads_dir.mkdir(parents=True, exist_ok=True)
    with lock(uploads_dir):
        curation.recover(uploads_dir)  # what a killed upload or curation left
        known = index.hashes()
        fresh = {}
        for digest, candidate in candidates.items():
            if digest in known:
                where = known[digest].relative_to(index.data_dir).as_posix()
                label, name = candidate[:2]
                report.duplicates.append(
                    {"file": name, "label": label, "sha256": digest, "duplicate_of": where}
                )
            else:
                fresh[digest] = candidate
        if fresh:
            _store_fresh(uploads_dir, index, fresh, report, test_share, min_test)
    return report


def _store_fresh(uploads_dir, index, fresh, report, test_share, min_test) -> None:
    """Audit the new images (``audit.inspect``): hold out the leaks, store the rest as one
    batch (copies inside it on one share), keep the findings."""
    batch = new_batch_name()
    found = audit.inspect(fresh, index.content)
    for digest, leak in found.leaks.items():
        label, name = fresh.pop(digest)[:2]
        report.leaks.append({"batch": batch, "file": name, "label": label, **leak})
    if fresh:
        splits = assign_splits(
            {digest: candidate[0] for digest, candidate in fresh.items()},
            split_counts(index.data_dir),
            test_share,
            min_test,
        )
        # a near-copy of a training image trains (it would judge a candidate on its twin), and
        # so do its copies inside the upload; other copies inside it share one split
        trains = {
            digest
            for digest, twin in found.near_duplicates.items()
            if not twin["duplicate_of"].startswith("this upload:")
        }
        for later, earlier in found.within.items():
            if later in trains or earlier in trains:
                trains |= {later, earlier}
        for later, earlier in found.within.items():
            if later in splits and earlier in splits:
                splits[later] = splits[earlier]
        splits.update({digest: "train" for digest in trains if digest in splits})
        _write_batch(uploads_dir, batch, fresh, splits, report)
        report.batch = batch
        stored = {row["sha256"]: row for row in report.accepted}
        report.near_duplicates = [
            {"batch": batch, **_public(stored[digest]), **twin}
            for digest, twin in found.near_duplicates.items()
            if digest in stored
        ]
    if report.leaks or report.near_duplicates:
        audit.write(uploads_dir, batch, report.leaks, report.near_duplicates)


def _public(row: dict) -> dict:
    """A manifest row as the audit lists it: the file's name in the upload, its label, where
    it is stored."""
    return {"file": row["file"], "label": row["label"], "stored_as": row["stored_as"]}


def class_counts(data_dir: Path) -> dict:
    """Images per class in the training split and in the pending uploads (and their shares)."""
    train = folders.discover(data_dir / "train").counts() if (data_dir / "train").is_dir() else {}
    uploads = folders.discover_uploads(data_dir / "uploads", None)
    shares = {
        split: folders.discover_uploads(data_dir / "uploads", split) for split in folders.SPLITS
    }
    return {
        "train": train,
        "uploads": uploads.counts() if uploads else {},
        "uploads_train": shares["train"].counts() if shares["train"] else {},
        "uploads_test": shares["test"].counts() if shares["test"] else {},
        "upload_batches": sorted(
            p.name
            for p in (data_dir / "uploads").glob("*")
            if p.is_dir() and not p.name.startswith(".")
        )
        if (data_dir / "uploads").is_dir()
        else [],
    }
