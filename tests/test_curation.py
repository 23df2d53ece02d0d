"""Curation of uploads: delete a batch, delete or rename (merge) a class; atomic, audited.

The data-level tests work on uploads stored by ``uploads.store_upload`` in temporary folders;
atomicity is checked with failures that happen for real (a full file system, a batch that
cannot be moved because it is a mount point, a process killed mid-way); the API tests go
through Flask's test client on the ``project`` fixture (SQLite: the code is plain SQLAlchemy
Core, as the store's).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from imgclf import audit, config, curation, data, migrations, training, uploads
from imgclf.store import Store

TOKEN = "curation-test-token-5f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(value: int, size=(12, 12)) -> bytes:
    """A small grayscale PNG of random pixels drawn with seed ``value``: one per value."""
    pixels = np.random.default_rng(value).integers(0, 256, size=size, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


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
        if p.is_file() and p.name != uploads.LOCK_FILE
    }


def manifest(batch_dir: Path) -> list[dict]:
    return json.loads((batch_dir / data.MANIFEST).read_text())


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
    splits = data.batch_splits(data_dir / "uploads" / names["a"])
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
    before = manifest(uploads_dir / names["a"])
    result = curation.delete_class(uploads_dir, "junk")
    assert (result["images"], result["train"] + result["test"]) == (3, 3)
    assert result["batches"] == sorted([names["a"], names["b"]])
    assert result["batches_removed"] == [names["b"]]
    assert not (uploads_dir / names["b"]).exists()
    assert not (uploads_dir / names["a"] / "junk").exists()
    rows = manifest(uploads_dir / names["a"])
    assert rows == [row for row in before if row["label"] != "junk"] and len(rows) == 8
    assert {c["name"] for c in curation.inventory(uploads_dir)["classes"]} == {"cat", "sevn"}
    assert data.discover_uploads(uploads_dir, None).class_names == ["cat", "sevn"]
    again = uploads.store_upload([("junk", "x.png", png(100))], uploads_dir, index)
    assert len(again.accepted) == 1


def test_rename_a_misspelt_class_moves_files_and_manifest_rows_keeping_their_split(store):
    data_dir, index, names = store
    uploads_dir, batch = data_dir / "uploads", data_dir / "uploads" / names["c"]
    splits = {k.split("/")[1]: v for k, v in data.batch_splits(batch).items() if "sevn/" in k}
    result = curation.rename_class(uploads_dir, "sevn", "seven")
    assert result["images"] == 7 and not result["merged"] and result["new_name"] == "seven"
    assert not (batch / "sevn").exists() and len(list((batch / "seven").iterdir())) == 7
    moved = {k.split("/")[1]: v for k, v in data.batch_splits(batch).items() if "seven/" in k}
    assert moved == splits
    for row in manifest(batch):
        assert row["stored_as"].split("/")[2] == row["label"] and row["label"] != "sevn"
        assert (data_dir / row["stored_as"]).is_file()
    duplicate = uploads.store_upload([("x", "y.png", png(200))], uploads_dir, index)
    assert duplicate.duplicates[0]["duplicate_of"].startswith(f"uploads/{names['c']}/seven/")


def test_rename_into_an_existing_class_merges_the_images(store):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    result = curation.rename_class(uploads_dir, "sevn", "cat")
    assert result["merged"] and result["images"] == 7
    merged = uploads_dir / names["c"] / "cat"
    assert len(list(merged.iterdir())) == 9 and not (uploads_dir / names["c"] / "sevn").exists()
    assert {row["label"] for row in manifest(uploads_dir / names["c"])} == {"cat"}
    classes = {c["name"]: c["images"] for c in curation.inventory(uploads_dir)["classes"]}
    assert classes == {"cat": 17, "junk": 3}


def test_unknown_targets_are_not_found_and_bad_names_are_refused_by_the_rule(store, tmp_path):
    data_dir, _, names = store
    uploads_dir = data_dir / "uploads"
    before = snapshot(uploads_dir)
    for call, words in [
        (lambda: curation.delete_batch(uploads_dir, "20990101-000000-abcdef"), "no upload batch"),
        (lambda: curation.delete_batch(uploads_dir, ".."), "no upload batch"),
        (lambda: curation.delete_batch(uploads_dir, uploads.LOCK_FILE), "no upload batch"),
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
        (data.MANIFEST, uploads.LABEL_RULE),  # a class folder named like the manifest
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
        [*names.values(), uploads.LOCK_FILE]
    )


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems (skipped where mounting is not allowed)."""
    mounted = []

    def mount(where: Path, size: str = "256k") -> Path:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full (unbuffered: nothing left over)."""
    with open(folder / "filler", "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


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
from imgclf import curation
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
    assert [p.name for p in uploads_dir.iterdir() if p.name.startswith(".")] == [uploads.LOCK_FILE]


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


# ----------------------------------------------------------------------------------- audit
def test_the_audit_table_comes_from_migration_0004_and_matches_the_code(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    assert migrations.upgrade(url)[1] == migrations.head() == "0004"
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, audit.curation_audit.metadata)
    assert [d for d in differences if "curation_audit" in repr(d)] == []
    log = audit.AuditLog(Store(url).engine)
    entry = log.start("delete-class", "junk", actor=audit.token_id(TOKEN), client="10.0.0.1")
    log.finish(entry, "done", {"images": 3, "batches": ["x", "y"]})
    refused = log.start("delete-batch", "nope", actor=audit.token_id(TOKEN))
    log.finish(refused, "refused", error="no upload batch 'nope'")
    latest, first = log.recent()
    assert (first["outcome"], first["images"], first["batches"]) == ("done", 3, 2)
    assert latest["detail"] == {"error": "no upload batch 'nope'"}
    assert first["actor"] == hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    assert TOKEN.encode() not in (tmp_path / "audit.db").read_bytes()


# ------------------------------------------------------------------------------------- API
@pytest.fixture
def client(project):
    from serve.app import create_app

    service = replace(config.get_service_settings(), admin_token=TOKEN, reload_poll_s=0.1)
    return create_app(project, service).test_client()


def api_upload(client, label: str, values: list[int]) -> str:
    files = [(io.BytesIO(png(v)), f"{v}.png") for v in values]
    response = client.post("/upload-data", data={"files": files, "label": label}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["batch"]


PATHS = [
    ("get", "/uploads"),
    ("get", "/uploads/audit"),
    ("delete", "/uploads/batches/x"),
    ("delete", "/uploads/classes/x"),
    ("patch", "/uploads/classes/x"),
]


def test_curation_endpoints_need_the_admin_token(client):
    for method, path in PATHS:
        assert getattr(client, method)(path, json={"name": "y"}).status_code == 401, path
        wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.get_json()["message"] == "wrong admin token"


def test_junk_deleted_and_misspelt_class_renamed_through_the_api(client, project, caplog):
    junk = api_upload(client, "junk", [1, 2, 3])
    api_upload(client, "sevn", [10, 11, 12, 13])
    listing = client.get("/uploads", headers=AUTH).get_json()
    assert {c["name"]: c["images"] for c in listing["classes"]} == {"junk": 3, "sevn": 4}
    assert len(listing["batches"]) == 2 and listing["batches"][0]["stored_at"]

    deleted = client.delete("/uploads/classes/junk", headers=AUTH)
    assert deleted.status_code == 200, deleted.get_json()
    assert deleted.get_json()["batches_removed"] == [junk]
    assert not (project.uploads_dir / junk).exists()
    renamed = client.patch("/uploads/classes/sevn", json={"name": "7"}, headers=AUTH)
    assert renamed.status_code == 200 and renamed.get_json()["new_name"] == "7"
    listing = client.get("/uploads", headers=AUTH).get_json()
    assert [c["name"] for c in listing["classes"]] == ["7"]
    batch = listing["batches"][0]["id"]
    assert client.delete(f"/uploads/batches/{batch}", headers=AUTH).status_code == 200
    assert client.get("/uploads", headers=AUTH).get_json() == {"classes": [], "batches": []}

    trail = client.get("/uploads/audit?limit=10", headers=AUTH).get_json()
    assert [(e["operation"], e["target"], e["outcome"]) for e in trail] == [
        ("delete-batch", batch, "done"),
        ("rename-class", "sevn", "done"),
        ("delete-class", "junk", "done"),
    ]
    assert trail[1]["new_name"] == "7" and trail[2]["images"] == 3
    assert {e["actor"] for e in trail} == {hashlib.sha256(TOKEN.encode()).hexdigest()[:8]}
    assert {e["client"] for e in trail} == {"127.0.0.1"}
    assert TOKEN not in json.dumps(trail) and TOKEN not in caplog.text


def test_api_bad_input_404_422_and_409_while_a_retrain_is_live(client, project):
    api_upload(client, "sevn", [10, 11])
    missing = client.delete("/uploads/classes/dog", headers=AUTH)
    assert missing.status_code == 404 and "'dog'" in missing.get_json()["message"]
    gone = client.delete("/uploads/batches/20990101-000000-abcdef", headers=AUTH)
    assert gone.status_code == 404 and "20990101-000000-abcdef" in gone.get_json()["message"]
    no_class = client.patch("/uploads/classes/dog", json={"name": "cat"}, headers=AUTH)
    assert no_class.status_code == 404 and "'dog'" in no_class.get_json()["message"]
    for bad in ("a/b", "..", " seven", "x" * 65):
        invalid = client.patch("/uploads/classes/sevn", json={"name": bad}, headers=AUTH)
        assert invalid.status_code == 422, (bad, invalid.get_json())
        assert invalid.get_json()["message"], bad
    rule = client.patch("/uploads/classes/sevn", json={"name": "a/b"}, headers=AUTH)
    assert uploads.LABEL_RULE in rule.get_json()["message"]
    extra = client.patch("/uploads/classes/sevn", json={"name": "x", "y": 1}, headers=AUTH)
    assert extra.status_code == 422

    job = Store(project.database_url).create_job("retrain", {}, str(project.reports_dir))
    for method, path in [("delete", "/uploads/classes/sevn"), ("patch", "/uploads/classes/sevn")]:
        busy = getattr(client, method)(path, json={"name": "seven"}, headers=AUTH)
        assert busy.status_code == 409 and job["id"] in busy.get_json()["message"]
        assert busy.get_json()["job"]["id"] == job["id"]
    assert [c["name"] for c in client.get("/uploads", headers=AUTH).get_json()["classes"]] == [
        "sevn"
    ]
    outcomes = [e["outcome"] for e in client.get("/uploads/audit", headers=AUTH).get_json()]
    assert outcomes == ["refused"] * 3  # the 404s; 422 and 409 never reached the data


def test_the_openapi_document_describes_the_curation_endpoints(client):
    spec = client.get("/openapi.json").get_json()
    assert set(spec["paths"]["/uploads/classes/{name}"]) >= {"delete", "patch"}
    assert "delete" in spec["paths"]["/uploads/batches/{batch_id}"]
    rename = spec["components"]["schemas"]["RenameClass"]["properties"]["name"]
    assert rename["pattern"] == uploads.LABEL_PATTERN.pattern
    assert "UploadInventory" in spec["components"]["schemas"]
