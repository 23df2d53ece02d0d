"""Curation of one uploaded image: delete it, or give it another label (``stored_as``:
``uploads/<batch>/<class>/<file>``, as the manifest and ``GET /data/issues`` name it).

Atomic like the batch and class operations (``curation``: the batch's new state is built
beside it, hard links and a rewritten manifest, and swapped in under the uploads' lock): the
image moves to ``<batch>/<label>/<file>`` and keeps its train/test share; a batch left
without images is removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from imgclf.data import curation, folders, manifest


def _place(uploads_dir: Path, stored_as: str) -> tuple[str, str, str]:
    """``(batch, class, file)`` of an uploaded image.

    Raises:
        NotFound: ``stored_as`` names no uploaded image.
    """
    parts = stored_as.split("/")
    batch_names = {batch.name for batch in curation.batches(uploads_dir)}
    known = len(parts) == 4 and parts[0] == "uploads" and parts[1] in batch_names
    classes = set()
    if known:  # never "..", a hidden folder, a link or a path of the caller's
        found = folders.class_folders(uploads_dir / parts[1])
        classes = {folder.name for folder in found if not folder.is_symlink()}
    if (
        not known
        or parts[2] not in classes
        or parts[3].startswith(".")
        or not folders.is_image_name(parts[3])
        or not _plain_file(uploads_dir / parts[1] / parts[2] / parts[3])
    ):
        raise curation.NotFound(
            f"no uploaded image {stored_as!r} (expected uploads/<batch>/<class>/<file>, "
            "as GET /data/issues or the batch's manifest names it)"
        )
    return parts[1], parts[2], parts[3]


def _plain_file(path: Path) -> bool:
    """A regular file, not a link (False for a name the file system refuses: too long)."""
    try:
        return path.is_file() and not path.is_symlink()
    except OSError:
        return False


def _builder(label: str, name: str, new_label: str | None) -> curation.Builder:
    """Build a batch's new state without ``<label>/<name>``, or with it moved to
    ``<new_label>/<name>``; returns whether the new state holds any image."""

    def build(source: Path, target: Path) -> bool:
        moved = source / label / name

        def skip(folder: str, entries: list[str]) -> list[str]:
            return [name] if Path(folder) == source / label else []

        for entry in sorted(source.iterdir()):
            if entry.name == manifest.FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(
                    entry,
                    target / entry.name,
                    symlinks=True,
                    ignore=skip,
                    copy_function=curation.link,
                )
            else:
                curation.link(str(entry), str(target / entry.name))
        if new_label is not None:
            destination = target / new_label / name
            destination.parent.mkdir(exist_ok=True)
            if destination.exists():
                raise curation.Conflict(
                    f"batch {source.name}: {new_label}/{name} already exists; the image "
                    "was left where it was"
                )
            curation.link(str(moved), str(destination))
        for folder in target.iterdir():  # a class folder left empty goes
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        _write_manifest(source, target, f"{label}/{name}", new_label)
        return bool(curation.batch_counts(target))

    return build


def _write_manifest(source: Path, target: Path, place: str, new_label: str | None) -> None:
    rows = manifest.read(source)
    if rows is None:
        if (source / manifest.FILE).is_file():
            curation.link(str(source / manifest.FILE), str(target / manifest.FILE))
        return
    kept = []
    for row in rows:
        where = manifest.class_and_name(row)
        if where is None or "/".join(where) != place:
            kept.append(row)
        elif new_label is not None:
            prefix = row["stored_as"].rsplit("/", 2)[0]
            kept.append(
                {**row, "label": new_label, "stored_as": f"{prefix}/{new_label}/{where[1]}"}
            )
    manifest.write(target, kept)


def _change(uploads_dir: Path, stored_as: str, new_label: str | None) -> dict:
    operation = "delete-file" if new_label is None else "relabel-file"
    with curation.locked(uploads_dir, "file", stored_as):
        batch, label, name = _place(uploads_dir, stored_as)
        if new_label == label:
            raise curation.InvalidName(f"the image is already labelled {label!r}")
        share = manifest.splits(uploads_dir / batch).get(f"{label}/{name}", "train")
        counts = {batch: {label: {**dict.fromkeys(folders.SPLITS, 0), share: 1}}}
        removed = curation.apply_plan(uploads_dir, {batch: _builder(label, name, new_label)})
    result = curation.result_of(operation, stored_as, counts, removed)
    if new_label is None:
        return result
    return {**result, "new_name": new_label, "stored_as": f"uploads/{batch}/{new_label}/{name}"}


def delete_file(uploads_dir: Path, stored_as: str) -> dict:
    """Remove one uploaded image and its manifest row.

    Raises:
        NotFound: no such uploaded image.
    """
    return _change(uploads_dir, stored_as, None)


def relabel_file(uploads_dir: Path, stored_as: str, label: str) -> dict:
    """Move one uploaded image to class ``label`` (same batch, same share).

    Raises:
        InvalidName: ``label`` breaks the class-name rule, or is the image's label already.
        NotFound: no such uploaded image.
        Conflict: the batch holds a file of that name in class ``label`` already.
    """
    curation.check_name(label)
    return _change(uploads_dir, stored_as, label)
