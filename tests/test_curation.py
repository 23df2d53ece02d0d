"""Curation of uploads at the data level: list, delete a batch, delete or rename (merge) a
class, and what training sees afterwards.

The tests work on uploads stored by ``uploads.store_upload`` in temporary folders; atomicity
is checked with failures that happen for real (a full file system, a batch that cannot be
moved because it is a mount point, a process killed mid-way) and at each step through the
documented seam ``curation.FAILPOINT``. The API and the audit table: ``test_curation_api``.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import fill, png

from imgclf.data import audit, curation, filecuration, folders, manifest, uploadrules, uploads
from imgclf.model import training


def upload(data_dir: Path, index: uploads.HashIndex, files: dict[str, list[int]]) -> str:
    """Store one batch: ``{label: [image values]}``; returns its name."""
    triples = [(label, f"{v}.png", png(v)) for label, values in files.items() for v in values]
    report = uploads.store_upload(triples, data_dir / "uploads", index, test_share=0.2)
    assert report.batch and not report.rejected
    return report.batch


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden work folders included) with its bytes; the lock file
    aside (it is there from the first upload on)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != uploadrules.LOCK_FILE
    }


def rows_of(batch_dir: Path) -> list[dict]:
    return manifest.read(batch_dir)


@pytest.fixture
def store(tmp_path):
    """Uploads in a temporary data folder: batch ``a`` (cat, junk), ``b`` (junk only),
    ``c`` (sevn, cat); yields ``(data_dir, index, {"a": name, ...})``."""
    data_dir = tmp_path / "data"
    index = uploads.HashIndex(data_dir)
    names = {
        "a": upload(data_dir, index, {"cat": list(range(0, 8)), "junk": [100, 101]}),
        "b": upload(data_dir, index, {"junk": [102]}),
        "c": upload(data_dir, index, {"sevn": list(range(200, 207)), "cat": [300, 301]}),
    }
    return data_dir, index, names


# ------------------------------------------------------------------------------- inventory
def test_inventory_lists_classes_and_batches_with_their_split(store):
    data_dir, _, names = store
    listing = curation.inventory(data_dir / "uploads")
    classes = {c["name"]: c for c in listing["classes"]}
    assert sorted(classes) == ["cat", "junk", "sevn"]
    assert classes["cat"]["images"] == 10 and classes["cat"]["batches"] == sorted(
        [names["a"], names["c"]]
    )
    assert classes["junk"]["images"] == 3 and classes["junk"]["batches"] == sorted(
        [names["a"], names["b"]]
    )
    batches = {b["id"]: b for b in listing["batches"]}
    first = batches[names["a"]]
    assert first["images"] == 10 and first["manifest"] and first["stored_at"].endswith("+00:00")
    assert first["classes"]["cat"]["images"] == 8
    # the split is the one the manifest records, image by image
    splits = manifest.splits(data_dir / "uploads" / names["a"])
    assert first["test"] == sum(split == "test" for split in splits.values()) > 0
    assert first["train"] + first["test"] == first["images"]
    assert curation.inventory(data_dir / "nowhere") == {"classes": [], "batches": []}


# ------------------------------------------------------------------------------ operations
def test_delete_a_batch_removes_its_files_and_manifest_and_its_images_can_come_back(store):
    data_dir, index, names = store
    uploads_dir = data_dir / "uploads"
    result = curation.delete_batch(uploads_dir, names["b"])
    assert result["images"] == 1 and result["batches_removed"] == [names["b"]]
    assert not (uploads_dir / names["b"]).exists()
    assert not [p for p in uploads_dir.iterdir() if p.name.startswith(curation.WORK_PREFIX)]
    again = uploads.store_upload([("junk", "x.png", png(102))], uploads_dir, index)
    assert len(again.accepted) == 1, "a deleted image is no duplicate any more"


def test_delete_a_class_in_every_batch_and_a_batch_left_empty(store):
    data_dir, index, names = store
    uploads_dir = data_dir / "uploads"
    before = rows_of(uploads_dir / names["a"])
    result = curation.delete_class(uploads_dir, "junk")
    assert (result["images"], result["train"] + result["test"]) == (3, 3)
    assert result["batches"] == sorted([names["a"], names["b"]])
    assert result["batches_removed"] == [names["b"]]
    assert not (uploads_dir / names["b"]).exists()
    assert not (uploads_dir / names["a"] / "junk").exists()
    rows = rows_of(uploads_dir / names["a"])
    assert rows == [row for row in before if row["label"] != "junk"] and len(rows) == 8
    assert {c["name"] for c in curation.inventory(uploads_dir)["classes"]} == {"cat", "sevn"}
    assert folders.discover_uploads(uploads_dir, None).class_names == ["cat", "sevn"]
    again = uploads.store_upload([("junk", "x.png", png(100))], uploads_dir, index)
    assert len(again.accepted) == 1


def test_rename_a_misspelt_class_moves_files_and_manifest_rows_keeping_their_split(store):
    data_dir, index, names = store
    uploads_dir, batch = data_dir / "uploads", data_dir / "uploads" / names["c"]
    splits = {k.split("/")[1]: v for k, v in manifest.splits(batch).items() if "sevn/" in k}
    result = curation.rename_class(uploads_dir, "sevn", "seven")
    assert result["images"] == 7 and not result["merged"] and result["new_name"] == "seven"
    assert not (batch / "sevn").exists() and len(list((batch / "seven").iterdir())) == 7
    moved = {k.split("/")[1]: v for k, v in manifest.splits(batch).items() if "seven/" in k}
    assert moved == splits
    for row in rows_of(batch):
        assert row["stored_as"].split("/")[2] == row["label"] and row["label"] != "sevn"
        assert (data_dir / row["stored_as"]).is_file()
    duplicate = uploads.store_upload([("x", "y.png", png(200))], uploads_dir, index)
    assert duplicate.duplicates[0]["duplicate_of"].startswith(f"uploads/{names['c']}/seven/")


def test_the_audits_rows_follow_a_renamed_class(store):
    """Findings about images of a renamed class keep naming them (new place, new label), a
    near-duplicate's conflict is judged again, and a suggestion of the old name, now gone,
    becomes the new one; other classes' rows stay as they were."""
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    rows = {row["label"]: row for row in rows_of(uploads_dir / names["c"])}
    sevn, cat = rows["sevn"], rows["cat"]
    near = {**sevn, "batch": names["c"], "duplicate_of": cat["stored_as"]}
    audit.write(
        uploads_dir, names["c"], [], [{**near, "duplicate_label": "cat", "conflict": True}]
    )
    issues = [
        {**sevn, "suggested_label": "cat", "score": 0.1},
        {**cat, "suggested_label": "sevn", "score": 0.2},
    ]
    audit.record_label_check(uploads_dir, names["c"], {"state": "done", "issues": issues})
    scan = {"state": "done", "label_issues": [{**sevn, "suggested_label": "cat", "score": 0.3}]}
    audit.write_training(uploads_dir, scan)
    before = audit.read(uploads_dir)
    assert len(before["label_issues"]) == 2 and len(before["near_duplicates"]) == 1

    curation.rename_class(uploads_dir, "sevn", "cat")  # merged: no longer a conflict
    found = audit.read(uploads_dir)
    moved = sevn["stored_as"].replace("/sevn/", "/cat/")
    assert (data_dir / moved).is_file()
    [twin] = found["near_duplicates"]
    assert twin["stored_as"] == moved and twin["label"] == "cat" and twin["conflict"] is False
    by_place = {row["stored_as"]: row for row in found["label_issues"]}
    assert by_place.keys() == {moved, cat["stored_as"]}
    assert by_place[moved]["label"] == "cat"
    assert by_place[cat["stored_as"]] == {
        "batch": names["c"],
        **issues[1],
        "suggested_label": "cat",
    }
    assert audit.read(uploads_dir, names["a"]) is None  # batches without findings: none made


def test_rename_into_an_existing_class_merges_the_images(store):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    result = curation.rename_class(uploads_dir, "sevn", "cat")
    assert result["merged"] and result["images"] == 7
    merged = uploads_dir / names["c"] / "cat"
    assert len(list(merged.iterdir())) == 9 and not (uploads_dir / names["c"] / "sevn").exists()
    assert {row["label"] for row in rows_of(uploads_dir / names["c"])} == {"cat"}
    classes = {c["name"]: c["images"] for c in curation.inventory(uploads_dir)["classes"]}
    assert classes == {"cat": 17, "junk": 3}


def test_unknown_targets_are_not_found_and_bad_names_are_refused_by_the_rule(store, tmp_path):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    before = snapshot(uploads_dir)
    for call, words in [
        (lambda: curation.delete_batch(uploads_dir, "20990101-000000-abcdef"), "no upload batch"),
        (lambda: curation.delete_batch(uploads_dir, ".."), "no upload batch"),
        (lambda: curation.delete_batch(uploads_dir, uploadrules.LOCK_FILE), "no upload batch"),
        (lambda: curation.delete_class(uploads_dir, "dog"), "no uploaded class 'dog'"),
        (lambda: curation.delete_class(uploads_dir, "../train"), "no uploaded class"),
        (lambda: curation.rename_class(uploads_dir, "dog", "cat"), "no uploaded class 'dog'"),
        (lambda: curation.delete_class(tmp_path / "none", "x"), "nothing has been uploaded"),
    ]:
        with pytest.raises(curation.NotFound, match=words):
            call()
    for bad, words in [
        ("a/b", uploads.LABEL_RULE),
        ("..", uploads.LABEL_RULE),
        (" cat", uploads.LABEL_RULE),  # spaces around a name are refused, not trimmed
        (manifest.FILE, uploads.LABEL_RULE),  # a class folder named like the manifest
        ("", "a label is required"),
        ("x" * 65, "at most 64"),
        ("sevn", "already named 'sevn'"),
    ]:
        with pytest.raises(curation.InvalidName) as refused:
            curation.rename_class(uploads_dir, "sevn", bad)
        assert words in str(refused.value), bad
    assert snapshot(uploads_dir) == before


def test_a_merge_that_would_overwrite_another_file_is_refused_and_changes_nothing(store):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    batch = uploads_dir / names["c"]
    clash = next((batch / "sevn").iterdir()).name
    (batch / "cat" / clash).write_bytes(png(999))  # a hand-placed file of the same name
    before = snapshot(uploads_dir)
    with pytest.raises(curation.Conflict, match=clash):
        curation.rename_class(uploads_dir, "sevn", "cat")
    assert snapshot(uploads_dir) == before


# ------------------------------------------------------------------------------- atomicity
@pytest.fixture
def failpoint(monkeypatch):
    """Make ``curation.FAILPOINT`` raise at one step; yields a setter."""

    def fail_at(wanted: str):
        def point(step: str):
            if step == wanted:
                raise OSError(f"injected failure at {step}")

        monkeypatch.setattr(curation, "FAILPOINT", point)

    return fail_at


@pytest.mark.parametrize("step", ["prepared {a}", "committed", "swapped {a}"])
def test_a_failure_at_any_step_leaves_files_and_manifests_as_before(store, failpoint, step):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    before = snapshot(uploads_dir)
    failpoint(step.format(**names))
    with pytest.raises(OSError, match="injected"):
        curation.delete_class(uploads_dir, "junk")
    assert snapshot(uploads_dir) == before
    assert sorted(p.name for p in uploads_dir.iterdir()) == sorted(
        [*names.values(), uploadrules.LOCK_FILE]
    )


def test_a_full_disk_while_preparing_leaves_everything_as_before(tmpfs, tmp_path):
    root = tmpfs(tmp_path / "small")
    data_dir = root / "data"
    index = uploads.HashIndex(data_dir)
    upload(data_dir, index, {"cat": [1, 2, 3], "junk": [4, 5]})
    upload(data_dir, index, {"junk": [6], "dog": [7]})
    fill(root)
    before = snapshot(data_dir / "uploads")
    with pytest.raises(OSError) as full:
        curation.rename_class(data_dir / "uploads", "junk", "dog")  # manifests need space
    assert full.value.errno == errno.ENOSPC  # for real
    assert snapshot(data_dir / "uploads") == before
    (root / "filler").unlink()
    assert curation.rename_class(data_dir / "uploads", "junk", "dog")["images"] == 3


def test_a_batch_that_cannot_be_moved_undoes_the_batches_already_swapped(store, tmpfs):
    """The last batch is a mount point: renaming it fails (EBUSY) after the first batch has
    been swapped; the first comes back, files and manifests as before."""
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    last = uploads_dir / max(names["a"], names["b"])
    saved = data_dir / "saved"
    shutil.copytree(last, saved)
    shutil.rmtree(last)
    tmpfs(last)
    shutil.copytree(saved, last, dirs_exist_ok=True)
    before = snapshot(uploads_dir)
    with pytest.raises(OSError) as busy:
        curation.delete_class(uploads_dir, "junk")
    assert busy.value.errno == errno.EBUSY  # a mount point cannot be renamed
    assert snapshot(uploads_dir) == before
    assert not [p for p in uploads_dir.iterdir() if p.name.startswith(curation.WORK_PREFIX)]


KILLER = """
import os, sys
from pathlib import Path
from imgclf.data import curation
def point(step):
    if step == sys.argv[2]:
        os._exit(9)
curation.FAILPOINT = point
curation.delete_class(Path(sys.argv[1]), "junk")
"""


def killed_at(uploads_dir: Path, step: str) -> None:
    """Run ``delete_class(junk)`` in a process that dies (``os._exit``) at ``step``."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLER), str(uploads_dir), step], timeout=120
    )
    assert done.returncode == 9


def test_a_process_killed_before_the_commit_leaves_nothing_changed(store):
    data_dir, index, names = store
    uploads_dir = data_dir / "uploads"
    before = snapshot(uploads_dir)
    killed_at(uploads_dir, f"prepared {names['a']}")
    assert [p.name for p in uploads_dir.iterdir() if p.name.startswith(curation.WORK_PREFIX)]
    upload(data_dir, index, {"dog": [500]})  # the next operation under the lock cleans up
    after = {k: v for k, v in snapshot(uploads_dir).items() if k in before}
    assert after == before
    assert not [p for p in uploads_dir.iterdir() if p.name.startswith(".curation-")]


def test_a_process_killed_after_the_commit_is_completed_by_the_next_operation(store):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    first = min(names["a"], names["b"])
    killed_at(uploads_dir, f"swapped {first}")
    half = {c["name"]: c["batches"] for c in curation.inventory(uploads_dir)["classes"]}
    assert half["junk"] == [max(names["a"], names["b"])]  # one batch swapped, not the other
    curation.rename_class(uploads_dir, "sevn", "seven")  # the next curation finishes the first
    classes = {c["name"] for c in curation.inventory(uploads_dir)["classes"]}
    assert classes == {"cat", "seven"} and not (uploads_dir / names["b"]).exists()
    assert [p.name for p in uploads_dir.iterdir() if p.name.startswith(".")] == [
        uploadrules.LOCK_FILE
    ]


# ------------------------------------------------------------------------- training sees it
def test_training_no_longer_sees_a_deleted_class_and_sees_a_renamed_one(tmp_path):
    data_dir = tmp_path / "data"
    seeds = iter(range(1000, 2000))
    for split, count in (("train", 3), ("test", 2)):
        for label in ("a", "b"):
            for i in range(count):
                path = data_dir / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png(next(seeds)))
    index = uploads.HashIndex(data_dir)
    upload(data_dir, index, {"junk": [1, 2, 3], "sevn": [10, 11, 12, 13, 14, 15]})

    def classes() -> tuple[list[str], list[str]]:
        dataset = training.load_dataset(
            data_dir, 8, "grayscale", include_uploads=True, cache_dir=tmp_path / "c", workers=1
        )
        return dataset.class_names, sorted({p.parent.name for p in dataset.test.paths})

    assert classes()[0] == ["a", "b", "junk", "sevn"]
    curation.delete_class(data_dir / "uploads", "junk")
    curation.rename_class(data_dir / "uploads", "sevn", "seven")
    names, tested = classes()
    assert names == ["a", "b", "seven"] and "seven" in tested and "sevn" not in tested


# ------------------------------------------------------------------------------ one image
def test_one_image_relabelled_moves_with_its_manifest_row_and_share(store):
    data_dir, index, names = store
    uploads_dir, batch = data_dir / "uploads", data_dir / "uploads" / names["a"]
    row = next(r for r in rows_of(batch) if r["label"] == "junk")
    result = filecuration.relabel_file(uploads_dir, row["stored_as"], "cat")
    moved = f"uploads/{names['a']}/cat/{row['stored_as'].rsplit('/', 1)[1]}"
    assert result["stored_as"] == moved and result["images"] == 1
    assert result[row["split"]] == 1 and result["new_name"] == "cat"
    assert (data_dir / moved).is_file() and not (data_dir / row["stored_as"]).exists()
    after = {r["sha256"]: r for r in rows_of(batch)}
    assert after[row["sha256"]] == {**row, "label": "cat", "stored_as": moved}
    assert len(after) == 10, "the other rows are untouched"
    other = uploads.store_upload([("x", "y.png", png(100))], uploads_dir, index)
    assert other.duplicates and not other.accepted, "still known by its bytes"


def test_one_image_deleted_and_the_last_of_a_batch_takes_the_batch(store):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    only = rows_of(uploads_dir / names["b"])[0]["stored_as"]
    result = filecuration.delete_file(uploads_dir, only)
    assert result["images"] == 1 and result["batches_removed"] == [names["b"]]
    assert not (uploads_dir / names["b"]).exists()
    row = rows_of(uploads_dir / names["a"])[0]
    filecuration.delete_file(uploads_dir, row["stored_as"])
    assert not (data_dir / row["stored_as"]).exists()
    assert row["sha256"] not in {r["sha256"] for r in rows_of(uploads_dir / names["a"])}


def test_one_image_unknown_or_relabelled_badly_is_refused_and_nothing_changes(store):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    before = snapshot(uploads_dir)
    row = rows_of(uploads_dir / names["a"])[0]
    place = row["stored_as"]
    (uploads_dir / "loose.png").write_bytes(png(998))  # reachable only through ".."
    outside = [f"uploads/{names['a']}/../loose.png", f"uploads/{names['a']}/./{place[-5:]}"]
    for wrong in (
        "uploads/nope/cat/0.png",
        f"uploads/{names['a']}/cat/none.png",
        "../x.png",
        *outside,
        f"uploads/{names['a']}/{manifest.FILE}",
    ):
        with pytest.raises(curation.NotFound):
            filecuration.delete_file(uploads_dir, wrong)
    with pytest.raises(curation.InvalidName):
        filecuration.relabel_file(uploads_dir, place, "a b/c")
    with pytest.raises(curation.InvalidName):
        filecuration.relabel_file(uploads_dir, place, row["label"])
    with pytest.raises(curation.NotFound):  # a name the file system refuses: not a 500
        filecuration.delete_file(uploads_dir, f"uploads/{names['a']}/cat/{'a' * 300}.png")
    with pytest.raises(curation.InvalidName):  # a class every reader of the data skips
        filecuration.relabel_file(uploads_dir, place, "Thumbs.db")
    outside = data_dir.parent / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(997))
    (uploads_dir / names["a"] / "evil").symlink_to(outside)  # a linked class folder
    with pytest.raises(curation.NotFound):
        filecuration.relabel_file(uploads_dir, f"uploads/{names['a']}/evil/secret.png", "cat")
    (uploads_dir / names["a"] / "evil").unlink()
    twin = uploads_dir / names["a"] / "junk" / place.rsplit("/", 1)[1]
    twin.write_bytes(png(999))  # another image of the same name in the target class
    with pytest.raises(curation.Conflict):
        filecuration.relabel_file(uploads_dir, place, "junk")
    twin.unlink()
    (uploads_dir / "loose.png").unlink()
    assert snapshot(uploads_dir) == before
