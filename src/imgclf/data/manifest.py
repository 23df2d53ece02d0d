"""The upload manifest: the one module that writes and reads it.

Each upload batch (``data/uploads/<batch>/``) holds ``manifest.json``: one row per stored image,
``{"file", "label", "sha256", "stored_as", "split"}``, where ``stored_as`` is
``uploads/<batch>/<class>/<name>`` and ``split`` is ``train`` or ``test`` (the share the image
was given once and for all when it was uploaded). Batches stored before uploads were split have
no ``split``: their images are training data. ``uploads.store_upload`` writes it,
``folders.discover_uploads`` reads the splits, ``policy`` counts the rows, ``curation`` rewrites it
when a class is deleted or renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "manifest.json"
SPLITS = ("train", "test")


def row(name: str, label: str, digest: str, batch: str, stored_name: str, split: str) -> dict:
    """One manifest row: an image ``name`` as uploaded, stored as ``<label>/<stored_name>``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    return {
        "file": name,
        "label": label,
        "sha256": digest,
        "stored_as": f"uploads/{batch}/{label}/{stored_name}",
        "split": split,
    }


def write(folder: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as the manifest of the batch being built in ``folder`` (a staging folder,
    renamed into place by the caller: the manifest is never written into a live batch)."""
    path = folder / FILE
    path.write_text(json.dumps(rows, indent=2))
    return path


def read(batch_dir: Path) -> list[dict] | None:
    """The rows of a batch's manifest; None when it has none or it cannot be read."""
    try:
        rows = json.loads((batch_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else None


def class_and_name(entry: dict) -> tuple[str, str] | None:
    """``(class, file name)`` of a row's stored image; None for a row without one."""
    stored = entry.get("stored_as")
    parts = stored.split("/") if isinstance(stored, str) else []
    return (parts[-2], parts[-1]) if len(parts) >= 2 else None


def splits(batch_dir: Path) -> dict[str, str]:
    """``<class>/<file>`` -> ``train`` or ``test`` for the images of one batch (images of a
    batch without splits have no entry: they are training data)."""
    found = {}
    for entry in read(batch_dir) or []:
        place = class_and_name(entry)
        if place and entry.get("split") in SPLITS:
            found["/".join(place)] = entry["split"]
    return found


def relabelled(rows: list[dict], name: str, new_name: str | None, dropped: set[str]) -> list:
    """The rows without those of class ``name``, or with them moved to ``new_name`` (except
    the files named in ``dropped``: already in ``new_name`` with the same bytes, kept once)."""
    kept = []
    for entry in rows:
        place = class_and_name(entry)
        if place is None or place[0] != name:
            kept.append(entry)
        elif new_name is not None and place[1] not in dropped:
            prefix = entry["stored_as"].rsplit("/", 2)[0]
            moved = f"{prefix}/{new_name}/{place[1]}"
            kept.append({**entry, "label": new_name, "stored_as": moved})
    return kept
