"""The audit of an upload on content (``neardup``): leaks of test images, and near-duplicates
of training images or of each other, found before anything is stored.

- A **leak** is an upload that nearly duplicates a test image (``data/test`` or an earlier
  upload's test share): trained on, it would teach the candidate the very images that judge
  it. It is held out: not stored, listed with the test file it copies.
- A **near-duplicate** of a training image (``data/train`` or an earlier upload's training
  share) is stored, and listed with the image it copies; when their labels differ it is a
  **label conflict** (``conflict``: the same picture under two names), the cheapest label
  issue to see.
- A near-duplicate of a training image is given the **training** share (in the test share it
  would judge a candidate on its twin), and so are its copies in the upload.
- Near-duplicates **within** one upload are given the same share (train or test) as the first
  of them, so that an upload cannot leak into itself.

Each upload's findings are kept in ``uploads/.audit/<batch>.json`` (``GET /data/issues``),
with the label check the API runs on the stored images after the upload
(``imgclf.loop.labelcheck``: confident learning on the served model's features).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from filelock import FileLock

from imgclf.data import folders, neardup
from imgclf.files import write_json_atomic

AUDIT_DIR = ".audit"
#: A label check still ``running`` after this long was interrupted (see ``_settled``)
STALE_S = 1800.0
#: What the last scan found in the whole training set (``loop.scan``)
TRAINING_FILE = "training.json"
#: An upload's name (``uploads._write_batch``): a time stamp and a random suffix
BATCH_NAME = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


class ContentIndex:
    """Fingerprints of the data's images by share (``test``, ``train``), cached by (path,
    size, modification time) so that only new files are decoded again."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._cache: dict[Path, tuple[int, int, np.ndarray]] = {}

    def share(self, share: str) -> tuple[list[Path], np.ndarray]:
        """The images of ``share`` and their fingerprints (one row each)."""
        paths, rows, seen = [], [], {}
        for path in folders.share_images(self.data_dir, share)[0]:
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            cached = self._cache.get(path)
            if cached is None or cached[:2] != (info.st_size, info.st_mtime_ns):
                try:
                    cached = (info.st_size, info.st_mtime_ns, neardup.fingerprint(path))
                except OSError:
                    continue  # unreadable: training reports it; nothing to compare
            seen[path] = cached
            paths.append(path)
            rows.append(cached[2])
        self._cache.update(seen)
        width = neardup.KEEP**2 - 1
        return paths, np.stack(rows) if rows else np.zeros((0, width), np.float32)


@dataclass
class Findings:
    """What ``inspect`` found among an upload's new images (keys: SHA-256)."""

    leaks: dict[str, dict] = field(default_factory=dict)
    near_duplicates: dict[str, dict] = field(default_factory=dict)
    #: later image -> the earlier image of this upload it nearly duplicates
    within: dict[str, str] = field(default_factory=dict)


def inspect(fresh: dict[str, tuple], index: ContentIndex) -> Findings:
    """Compare an upload's new images (sha256 -> (label, file name, ending, bytes)) with the
    test and training images and with each other."""
    found = Findings()
    digests = list(fresh)
    if not digests:
        return found
    prints = np.stack([neardup.fingerprint(fresh[d][3]) for d in digests])
    test_paths, test_prints = index.share("test")
    for match in neardup.duplicates(prints, test_prints):
        digest = digests[match.query]
        found.leaks[digest] = {
            "test_file": _relative(test_paths[match.known], index.data_dir),
            "similarity": round(match.similarity, 4),
        }
    train_paths, train_prints = index.share("train")
    for match in neardup.duplicates(prints, train_prints):
        digest = digests[match.query]
        if digest not in found.leaks:
            twin = _twin(fresh[digest][0], train_paths[match.known], index)
            found.near_duplicates[digest] = {**twin, "similarity": round(match.similarity, 4)}
    for match in neardup.within(prints):
        later, earlier = digests[match.query], digests[match.known]
        found.within[later] = earlier
        if later not in found.leaks and later not in found.near_duplicates:
            found.near_duplicates[later] = {
                "duplicate_of": f"this upload: {fresh[earlier][1]}",
                "duplicate_label": fresh[earlier][0],
                "conflict": fresh[earlier][0] != fresh[later][0],
                "similarity": round(match.similarity, 4),
            }
    return found


def _relative(path: Path, data_dir: Path) -> str:
    return path.relative_to(data_dir).as_posix()


def _twin(label: str, path: Path, index: ContentIndex) -> dict:
    twin_label = path.parent.name
    return {
        "duplicate_of": _relative(path, index.data_dir),
        "duplicate_label": twin_label,
        "conflict": twin_label != label,
    }


def training_leaks(data_dir: Path, index: ContentIndex | None = None) -> list[dict]:
    """Training images (``data/train`` and the uploads' training share) that nearly duplicate
    a test image: the test set then judges a model on what it was trained on."""
    index = index or ContentIndex(data_dir)
    test_paths, test_prints = index.share("test")
    train_paths, train_prints = index.share("train")
    found = []
    for match in neardup.duplicates(train_prints, test_prints):
        place = _relative(train_paths[match.query], data_dir)
        parts = place.split("/")
        found.append(
            {
                "batch": parts[1] if parts[0] == "uploads" else None,
                "file": parts[-1],
                "stored_as": place,
                "label": parts[-2],
                "test_file": _relative(test_paths[match.known], data_dir),
                "similarity": round(match.similarity, 4),
            }
        )
    return found


def write_training(uploads_dir: Path, record: dict) -> Path:
    """Keep what the last scan found in the training set (``loop.scan``): ``state``,
    ``model_version``, ``computed_at``, ``label_issues``, ``leaks``, ``note``."""
    (uploads_dir / AUDIT_DIR).mkdir(parents=True, exist_ok=True)
    return write_json_atomic(uploads_dir / AUDIT_DIR / TRAINING_FILE, record)


def write(uploads_dir: Path, batch: str, leaks: list[dict], near_duplicates: list[dict]) -> Path:
    """Keep one upload's findings (atomically) for ``GET /data/issues``."""
    folder = uploads_dir / AUDIT_DIR
    folder.mkdir(exist_ok=True)
    record = {"batch": batch, "leaks": leaks, "near_duplicates": near_duplicates}
    return write_json_atomic(folder / f"{batch}.json", record)


def record_label_check(uploads_dir: Path, batch: str, check: dict) -> Path:
    """Keep the state or the result of one upload's label check (``loop.labelcheck``):
    ``check`` holds ``state`` (running, done or failed), ``model_version``, ``computed_at``,
    ``issues``, ``checked`` and ``note``."""
    path = uploads_dir / AUDIT_DIR / f"{batch}.json"
    (uploads_dir / AUDIT_DIR).mkdir(parents=True, exist_ok=True)
    # read, change, write under a lock: the API's check and a scan's child may both write
    with FileLock(str(path) + ".lock"):
        record = json.loads(path.read_text()) if path.is_file() else None
        record = record or {"batch": batch, "leaks": [], "near_duplicates": []}
        record["label_check"] = check
        return write_json_atomic(path, record)


def read(uploads_dir: Path, batch: str | None = None) -> dict | None:
    """The findings of one upload (None: no such audit), or of every upload and the last scan
    of the training set (``batch`` None); images removed or moved since (curation) are left
    out."""
    folder = uploads_dir / AUDIT_DIR
    if batch is not None:
        path = folder / f"{batch}.json"
        if not BATCH_NAME.match(batch) or not path.is_file():
            return None
        paths = [path]
    else:
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        paths = [path for path in found if BATCH_NAME.match(path.stem)]
    leaks, near, issues, outliers, checks = [], [], [], [], []
    kept = uploads_dir.parent
    for path in paths:
        record = json.loads(path.read_text())
        leaks += record["leaks"]
        near += [row for row in record["near_duplicates"] if (kept / row["stored_as"]).is_file()]
        check = _settled(record.get("label_check"))
        if check:
            checks.append(check)
            issues += _present(record["batch"], check.get("issues", []), kept)
            outliers += _present(record["batch"], check.get("outliers", []), kept)
    scan = _training(uploads_dir) if batch is None else None
    if scan:  # the last scan of the whole training set (loop.scan): what the uploads lack
        checks.append(scan)
        listed = {row["stored_as"] for row in issues}
        issues += [
            row
            for row in scan.get("label_issues", [])
            if row["stored_as"] not in listed and (kept / row["stored_as"]).is_file()
        ]
        leaks += [row for row in scan.get("leaks", []) if (kept / row["stored_as"]).is_file()]
    latest = max(checks, key=lambda c: c.get("computed_at") or "", default={})
    return {
        "state": "running" if any(c["state"] == "running" for c in checks) else "done",
        "model_version": latest.get("model_version"),
        "computed_at": latest.get("computed_at"),
        "notes": [c["note"] for c in checks if c.get("note")],
        "label_issues": issues,
        "outliers": outliers,
        "leaks": leaks,
        "near_duplicates": near,
    }


def _settled(check: dict | None) -> dict | None:
    """A label check, or one left ``running`` by a process that ended (an API worker killed
    mid-check) reported as ``failed`` once it is older than ``STALE_S``."""
    if not check or check.get("state") != "running":
        return check
    try:
        started = datetime.fromisoformat(check["computed_at"])
    except (KeyError, TypeError, ValueError):
        return check
    if (datetime.now(UTC) - started).total_seconds() < STALE_S:
        return check
    note = (
        "the label check was interrupted (its process ended before it finished); "
        "POST /data/issues/scan checks every upload again"
    )
    return {**check, "state": "failed", "note": note}


def _training(uploads_dir: Path) -> dict | None:
    path = uploads_dir / AUDIT_DIR / TRAINING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _present(batch: str, rows: list[dict], kept: Path) -> list[dict]:
    """``rows`` of images still stored (curation may have moved or removed them since)."""
    return [{"batch": batch, **row} for row in rows if (kept / row["stored_as"]).is_file()]


def counts(uploads_dir: Path, search: bool = False) -> dict:
    """What the audit of the data found, in numbers (a retrain's summary and job result);
    with ``search``, training images nearly duplicating a test image are looked for now (on
    content: seconds), not taken from the last scan."""
    found = read(uploads_dir)
    leaks, near = found["leaks"], found["near_duplicates"]
    held_out = sum(1 for row in leaks if not row.get("stored_as"))
    trained = len(leaks) - held_out
    if search:
        trained = len(training_leaks(uploads_dir.parent))
    return {
        "leaks_held_out": held_out,
        "training_leaks": trained,
        "near_duplicates": len(near),
        "label_conflicts": sum(1 for row in near if row.get("conflict")),
        "label_issues": len(found["label_issues"]),
        "outliers": len(found["outliers"]),
        "check_running": found["state"] == "running",
        "model_version": found["model_version"],
    }


def summary(found: dict) -> str:
    """What the audit of the data found (``counts``), in a few sentences, for the retrain's
    report."""
    said = []
    if not found["leaks_held_out"] + found["training_leaks"] + found["near_duplicates"]:
        said.append("Data audit: no leak of a test image, no near-duplicate.")
    else:
        said.append(
            f"Data audit: {found['leaks_held_out']} near-copies of test images held out (not "
            f"trained on); {found['training_leaks']} training images nearly duplicating a test "
            f"image; {found['near_duplicates']} near-duplicates of other "
            f"images in the training data, {found['label_conflicts']} of them under a different "
            "label than their twin."
        )
    said.append(
        f"{found['label_issues']} label issues (images whose label the model's features do not "
        f"support) and {found['outliers']} outliers (unlike every class) are listed; `GET "
        "/data/issues` shows them, the Data tab fixes them."
    )
    if found["check_running"]:
        said.append("A check was still running when this retrain read the data.")
    return " ".join(said)


#: Fields of an audit row that name an image's place (``uploads/<batch>/<class>/<file>``),
#: each with the field that holds that image's label.
PLACES = {"stored_as": "label", "duplicate_of": "duplicate_label"}


def follow_rename(
    uploads_dir: Path, name: str, new_name: str, batches: set[str], gone: bool
) -> int:
    """Rewrite the audit after the uploaded class ``name`` of ``batches`` became ``new_name``
    (``curation.rename_class``), so that its rows follow the images rather than vanish: each
    image that moved keeps its row under its new place and label, a near-duplicate's
    ``conflict`` is judged again, and where no class ``name`` is left (``gone``) a suggested
    label ``name`` becomes ``new_name``. Returns how many rows changed."""
    folder = uploads_dir / AUDIT_DIR
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    changed = 0
    for path in paths:
        with FileLock(str(path) + ".lock"):  # as record_label_check writes
            record = json.loads(path.read_text())
            count = sum(_renamed(row, name, new_name, batches, gone) for row in _rows(record))
            if count:
                write_json_atomic(path, record)
        changed += count
    return changed


def _rows(value):
    """Every audit row (a dict naming an image's place) anywhere in ``value``."""
    if isinstance(value, list):
        for item in value:
            yield from _rows(item)
    elif isinstance(value, dict):
        if any(isinstance(value.get(place), str) for place in PLACES):
            yield value
        for item in value.values():
            if isinstance(item, list | dict):
                yield from _rows(item)


def _renamed(row: dict, name: str, new_name: str, batches: set[str], gone: bool) -> bool:
    """Rename ``row``'s images of class ``name`` in ``batches`` in place; whether it changed."""
    before = dict(row)
    for place, label in PLACES.items():
        parts = str(row.get(place) or "").split("/")
        if len(parts) == 4 and parts[0] == "uploads" and parts[1] in batches:
            if parts[2] == name:
                row[place] = "/".join([parts[0], parts[1], new_name, parts[3]])
                if row.get(label) == name:
                    row[label] = new_name
    if "conflict" in row and isinstance(row.get("duplicate_label"), str):
        row["conflict"] = row.get("label") != row["duplicate_label"]
    if gone and row.get("suggested_label") == name:
        row["suggested_label"] = new_name
    return row != before


def forget(uploads_dir: Path, batch: str) -> None:
    """Drop a deleted batch's audit (its findings named images that are gone)."""
    if BATCH_NAME.match(batch):
        (uploads_dir / AUDIT_DIR / f"{batch}.json").unlink(missing_ok=True)
        (uploads_dir / AUDIT_DIR / f"{batch}.json.lock").unlink(missing_ok=True)
