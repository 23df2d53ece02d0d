"""Curation of uploaded data: list, delete a batch, delete or rename (merge) a class.

Uploads live in ``data/uploads/<batch>/<class>/<file>`` with a ``manifest.json`` per batch
(``uploads.store_upload``). Every change here is atomic, files and manifests together, and
holds the same file lock as uploads (``uploadrules.lock``):

1. *prepare*: the new state of each affected batch is built in a hidden work folder beside
   the batches (``.curation-*/new/<batch>``): the files that stay are hard links (a copy where
   the file system has none), the manifest is rewritten. A batch left without images is
   not rebuilt: it will be removed. A failure here removes the work folder; nothing changed.
2. *commit*: a ``COMMIT`` file naming the batches is written into the work folder.
3. *swap*: each batch is renamed into ``.curation-*/old/`` and its new state renamed into
   place. A failure here undoes the renames already done (the previous state comes back).
4. the work folder (the old states) is removed.

A process killed part-way leaves its work folder behind; the next operation (an upload or a
curation, under the lock) finishes it: without ``COMMIT`` it is dropped (the batches were
never touched), with ``COMMIT`` the swap is completed. Hidden folders are invisible to every
reader of the uploads (``folders.discover_uploads``, ``uploads.HashIndex``), so a deleted
image is no duplicate any more and can be uploaded again.

``FAILPOINT`` is the documented seam for tests: called with the step's name (``prepared
<batch>``, ``committed``, ``swapped <batch>``), it may raise (or end the process) to make an
operation fail, for real, at that point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from imgclf.data import audit, folders, manifest, uploadrules

WORK_PREFIX = ".curation-"
COMMIT = "COMMIT"
#: Staging folders ``uploads.store_upload`` leaves when its process is killed.
UPLOAD_STAGING = re.compile(r"^\.\d{8}-\d{6}-[0-9a-f]{6}-")
#: Tests set this to fail an operation at a named step (see the module docstring).
FAILPOINT: Callable[[str], None] = lambda step: None  # noqa: E731


class CurationError(ValueError):
    """A curation request that cannot be done; the message says why. Nothing was changed."""


class NotFound(CurationError):
    """No such batch or class among the uploads."""


class InvalidName(CurationError):
    """The new class name breaks the class-name rule (``uploadrules.LABEL_RULE``)."""


class Conflict(CurationError):
    """The change would overwrite a different file of the same name."""


# ------------------------------------------------------------------------------- inventory
def batches(uploads_dir: Path) -> list[Path]:
    """The upload batches (hidden work folders excluded), sorted by name."""
    if not uploads_dir.is_dir():
        return []
    return sorted(
        p
        for p in uploads_dir.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )


def _image_names(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and folders.is_image_name(p.name)
    )


def batch_counts(batch: Path) -> dict[str, dict[str, int]]:
    """Images per class of one batch, split into ``train`` and ``test`` as its manifest says."""
    splits = manifest.splits(batch)
    counts = {}
    for folder in folders.class_folders(batch):
        tally = dict.fromkeys(folders.SPLITS, 0)
        for name in _image_names(folder):
            tally[splits.get(f"{folder.name}/{name}", "train")] += 1
        if sum(tally.values()):
            counts[folder.name] = tally
    return counts


def stored_at(batch: Path) -> str:
    """When a batch was stored (UTC, ISO 8601): from its name, else its folder's time."""
    match = re.match(r"^(\d{8}-\d{6})-", batch.name)
    if match:
        when = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    else:
        when = datetime.fromtimestamp(batch.stat().st_mtime, UTC)
    return when.isoformat(timespec="seconds")


def inventory(uploads_dir: Path) -> dict:
    """The uploaded classes and batches, with counts and each batch's train/test split.

    Read without the lock: a batch that an operation moves away meanwhile is left out.
    """
    listed, classes = [], {}
    for batch in batches(uploads_dir):
        try:
            counts, when = batch_counts(batch), stored_at(batch)
        except FileNotFoundError:
            continue
        listed.append(
            {
                "id": batch.name,
                "stored_at": when,
                "images": sum(sum(c.values()) for c in counts.values()),
                "train": sum(c["train"] for c in counts.values()),
                "test": sum(c["test"] for c in counts.values()),
                "manifest": (batch / manifest.FILE).is_file(),
                "classes": {name: {**c, "images": sum(c.values())} for name, c in counts.items()},
            }
        )
        for name, tally in counts.items():
            row = classes.setdefault(name, {"name": name, "images": 0, "train": 0, "test": 0})
            row["images"] += sum(tally.values())
            row["train"] += tally["train"]
            row["test"] += tally["test"]
            row.setdefault("batches", []).append(batch.name)
    return {"classes": [classes[name] for name in sorted(classes)], "batches": listed}


# ------------------------------------------------------------------------------ operations
def delete_batch(uploads_dir: Path, batch_id: str) -> dict:
    """Remove one upload batch, its images and its manifest.

    Raises:
        NotFound: no batch of that name.
    """
    with locked(uploads_dir, "batch", batch_id):
        if batch_id not in {batch.name for batch in batches(uploads_dir)}:
            raise NotFound(f"no upload batch {batch_id!r}")
        counts = batch_counts(uploads_dir / batch_id)
        apply_plan(uploads_dir, {batch_id: None})
    return result_of("delete-batch", batch_id, {batch_id: counts}, {batch_id})


def delete_class(uploads_dir: Path, name: str) -> dict:
    """Remove every uploaded image of a class, from every batch (and the manifests' rows).

    A batch left without images is removed. The training set (``train/``, ``test/``) is
    never touched.

    Raises:
        NotFound: no uploaded class of that name.
    """
    with locked(uploads_dir, "class", name):
        counts = _batches_with(uploads_dir, name)
        removed = apply_plan(uploads_dir, {batch: _builder(name, None) for batch in counts})
    return result_of("delete-class", name, counts, removed)


def rename_class(uploads_dir: Path, name: str, new_name: str) -> dict:
    """Rename an uploaded class in every batch; into an existing class, the images merge.

    Each image keeps its train/test share; the manifests follow the moved files.

    Raises:
        InvalidName: ``new_name`` breaks the class-name rule, or is ``name`` itself.
        NotFound: no uploaded class ``name``.
        Conflict: a batch holds a different file of the same name in both classes.
    """
    check_name(new_name)
    with locked(uploads_dir, "class", name):
        counts = _batches_with(uploads_dir, name)
        if new_name == name:
            raise InvalidName(f"the class is already named {name!r}")
        merged = any(new_name in batch_counts(batch) for batch in batches(uploads_dir))
        apply_plan(uploads_dir, {batch: _builder(name, new_name) for batch in counts})
        # the audit's rows follow the images (after the change: a crash before leaves them
        # naming files that are gone, which GET /data/issues leaves out)
        data_dir = uploads_dir.parent
        gone = not any((data_dir / split / name).is_dir() for split in folders.SPLITS)
        audit.follow_rename(uploads_dir, name, new_name, set(counts), gone)
    result = result_of("rename-class", name, counts, set())
    return {**result, "new_name": new_name, "merged": merged}


def check_name(name: str) -> str:
    """Return ``name`` if it may name a class (``uploadrules.validate_label``, as given: no
    spaces around it).

    Raises:
        InvalidName: the message states the rule.
    """
    try:
        checked = uploadrules.validate_label(name)
    except uploadrules.UploadError as error:
        raise InvalidName(str(error)) from None
    if checked != name or name == manifest.FILE:
        raise InvalidName(f"label {name!r} is not allowed: {uploadrules.LABEL_RULE}")
    return name


def _batches_with(uploads_dir: Path, name: str) -> dict[str, dict[str, dict[str, int]]]:
    """``{batch: {name: split counts}}`` for the batches holding images of class ``name``.

    Raises:
        NotFound: none does.
    """
    found = {}
    for batch in batches(uploads_dir):
        counts = batch_counts(batch)
        if name in counts:
            found[batch.name] = {name: counts[name]}
    if not found:
        raise NotFound(f"no uploaded class {name!r}")
    return found


def result_of(operation: str, target: str, counts: dict, removed: set[str]) -> dict:
    """What an operation did: images and batches touched, by split."""
    tallies = [tally for per_class in counts.values() for tally in per_class.values()]
    by_split = {split: sum(t[split] for t in tallies) for split in folders.SPLITS}
    return {
        "operation": operation,
        "target": target,
        "images": sum(by_split.values()),
        **by_split,
        "batches": sorted(counts),
        "batches_removed": sorted(removed),
    }


class locked:
    """Hold the uploads' lock and finish what a killed operation left (``recover``)."""

    def __init__(self, uploads_dir: Path, kind: str, name: str):
        self.uploads_dir, self.kind, self.name = uploads_dir, kind, name
        self.lock = None

    def __enter__(self):
        if not self.uploads_dir.is_dir():
            what = {"batch": "upload batch", "file": "uploaded image"}.get(
                self.kind, "uploaded class"
            )
            raise NotFound(f"no {what} {self.name!r}: nothing has been uploaded")
        self.lock = uploadrules.lock(self.uploads_dir)
        self.lock.acquire()
        try:
            recover(self.uploads_dir)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.release()


# --------------------------------------------------------------------- prepare, build, swap
Builder = Callable[[Path, Path], bool]


def link(source: str, target: str) -> None:
    """Hard-link a file (no data copied); a copy where the file system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _builder(name: str, new_name: str | None) -> Builder:
    """Build a batch's new state without class ``name`` (deleted, or moved into ``new_name``).

    The builder links every other entry of the batch, rewrites the manifest (when the batch
    has one) and returns whether the new state holds any image.
    """

    def build(source: Path, target: Path) -> bool:
        merge = new_name is not None and (source / new_name).is_dir()
        skip = {manifest.FILE, name, new_name if merge else None}
        for entry in sorted(source.iterdir()):
            if entry.name in skip:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target / entry.name, symlinks=True, copy_function=link)
            else:
                link(str(entry), str(target / entry.name))
        dropped = set()
        if new_name is not None:
            if merge:
                shutil.copytree(source / new_name, target / new_name, copy_function=link)
            dropped = _merge_folder(source / name, target / new_name)
        _write_manifest(source, target, name, new_name, dropped)
        return bool(batch_counts(target))

    return build


def _merge_folder(source: Path, target: Path) -> set[str]:
    """Link the files of ``source`` into ``target``; returns the names already there with the
    same bytes (kept once).

    Raises:
        Conflict: a file of the same name but other bytes is already there.
    """
    target.mkdir(exist_ok=True)
    dropped = set()
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(exist_ok=True)
        elif destination.exists():
            if destination.read_bytes() != path.read_bytes():
                raise Conflict(
                    f"batch {source.parent.name}: {destination.relative_to(target.parent)} "
                    f"already exists with other content than {path.relative_to(source.parent)}"
                )
            dropped.add(path.relative_to(source).as_posix())
        else:
            link(str(path), str(destination))
    return dropped


def _write_manifest(
    source: Path, target: Path, name: str, new_name: str | None, dropped: set[str]
) -> None:
    """The batch's manifest without the rows of ``name``, or with them moved to ``new_name``.

    A batch without a manifest gets none; one whose manifest cannot be read keeps it as is.
    """
    path = source / manifest.FILE
    if not path.is_file():
        return
    rows = manifest.read(source)
    if rows is None:
        link(str(path), str(target / manifest.FILE))
        return
    manifest.write(target, manifest.relabelled(rows, name, new_name, dropped))


def apply_plan(uploads_dir: Path, plan: dict[str, Builder | None]) -> set[str]:
    """Replace each batch of ``plan`` by what its builder makes (None: remove the batch), all
    of them or none (see the module docstring); returns the batches removed."""
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=uploads_dir))
    try:
        (work / "new").mkdir()
        (work / "old").mkdir()
        removed = set()
        for batch, build in plan.items():
            staged = work / "new" / batch
            staged.mkdir()
            if build is None or not build(uploads_dir / batch, staged):
                shutil.rmtree(staged)
                removed.add(batch)
            else:
                staged.chmod(0o755)
            FAILPOINT(f"prepared {batch}")
        (work / COMMIT).write_text(json.dumps(sorted(plan)))
        FAILPOINT("committed")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    done: list[str] = []
    try:
        for batch in sorted(plan):
            _swap(uploads_dir, work, batch)
            done.append(batch)
            FAILPOINT(f"swapped {batch}")
    except BaseException:
        _undo(uploads_dir, work, done)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return removed


def _swap(uploads_dir: Path, work: Path, batch: str) -> None:
    """Move a batch out into ``old/`` (unless already there) and its new state in (if any)."""
    old, new, live = work / "old" / batch, work / "new" / batch, uploads_dir / batch
    if not old.exists() and live.exists():
        os.rename(live, old)
    if new.exists():
        os.rename(new, live)


def _undo(uploads_dir: Path, work: Path, done: list[str]) -> None:
    """Put back the previous state of the batches swapped so far, then drop the work folder.

    Should a rename fail here too, the work folder (with ``COMMIT``) stays and the next
    operation completes the change instead: either way the batches end whole.
    """
    batch = None
    try:
        pending = [b for b in json.loads((work / COMMIT).read_text()) if b not in done]
        for batch in [*reversed(done), *pending]:
            old, new, live = work / "old" / batch, work / "new" / batch, uploads_dir / batch
            if old.exists():
                if live.exists():
                    os.rename(live, new)
                os.rename(old, live)
        (work / COMMIT).unlink()
    except OSError:
        return
    shutil.rmtree(work, ignore_errors=True)


def recover(uploads_dir: Path) -> list[str]:
    """Finish what killed operations left (call under the uploads' lock): a work folder with
    ``COMMIT`` is completed, one without is dropped, and so are an upload's staging folders.

    Returns:
        The leftovers handled.
    """
    handled = []
    for entry in sorted(uploads_dir.iterdir()):
        if entry.name.startswith(WORK_PREFIX) and entry.is_dir():
            if (entry / COMMIT).is_file():
                for batch in json.loads((entry / COMMIT).read_text()):
                    _swap(uploads_dir, entry, batch)
            shutil.rmtree(entry)
        elif UPLOAD_STAGING.match(entry.name) and entry.is_dir():
            shutil.rmtree(entry)
        else:
            continue
        handled.append(entry.name)
    return handled
