"""The audit of uploads on content (``imgclf.data.audit``, ``neardup``): test images
re-uploaded (resized, re-encoded as JPEG) are held out as leaks naming their test file;
training images re-uploaded are stored, listed as near-duplicates, and as label conflicts when
their label differs; copies inside one upload share one split. Through the REST API
(``POST /upload-data``, ``GET /data/issues``) on the ``project`` fixture (the digits)."""

from __future__ import annotations

import io
import shutil
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import api_client, png, running_worker, wait_for
from PIL import Image

from imgclf.data import audit, manifest, neardup, uploads

TOKEN = "audit-test-token-7a2e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(project):
    return api_client(project, TOKEN)


def altered(path, rng) -> bytes:
    """A user's copy: resized 1 to 4 times, re-encoded as JPEG (quality 60 to 90)."""
    with Image.open(path) as image:
        scale = rng.uniform(1.0, 4.0)
        size = round(image.width * scale), round(image.height * scale)
        copy = image.resize(size, Image.Resampling.BICUBIC).convert("RGB")
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=int(rng.integers(60, 91)))
    return buffer.getvalue()


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def thirty(folder, rng) -> dict[str, tuple[str, str]]:
    """Thirty images of ``folder`` (a split), three per class: upload name -> (class, path)."""
    chosen = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(class_dir.glob("*.png"))[:3]:
            chosen[f"{class_dir.name}/{path.stem}.jpg"] = (class_dir.name, path)
    assert len(chosen) == 30
    return chosen


def test_test_images_uploaded_again_are_held_out_as_leaks_naming_their_test_file(client, project):
    rng = np.random.default_rng(3)
    copies = thirty(project.test_dir, rng)
    body = zipped({name: altered(path, rng) for name, (_, path) in copies.items()})
    answer = client.post("/upload-data", data=body, content_type="application/zip", headers=AUTH)
    assert answer.status_code in (200, 201), answer.get_json()
    leaks = answer.get_json()["leaks"]
    named = {leak["file"]: leak["test_file"] for leak in leaks}
    right = [n for n, (_, path) in copies.items() if named.get(Path(n).name) == rel(path, project)]
    # measured: 29 of 30 (make bench-data: 95 % of resized digits found, none of 300 clean
    # ones flagged); at least 27 leaves room for other seeds of the copies
    print(f"{len(right)} of 30 test images found as leaks, naming their test file")
    assert len(right) >= 27, (len(right), leaks[:3])
    batch = leaks[0]["batch"]
    listed = client.get(f"/data/issues?batch={batch}", headers=AUTH).get_json()
    assert {leak["file"] for leak in listed["leaks"]} == {leak["file"] for leak in leaks}
    # held out: none of them was stored, so no candidate is trained on its test twin
    assert answer.get_json()["counts"]["accepted"] == 30 - len(leaks)


def rel(path, project) -> str:
    return path.relative_to(project.data_dir).as_posix()


def test_training_images_uploaded_again_are_not_leaks_but_near_duplicates_and_conflicts(
    client, project
):
    rng = np.random.default_rng(4)
    copies = thirty(project.train_dir, rng)
    # five of them under the wrong class: the same picture under two names
    wrong = {name: ("0" if label != "0" else "1") for name, (label, _) in list(copies.items())[:5]}
    body = zipped(
        {
            f"{wrong.get(name, label)}/{Path(name).name}": altered(path, rng)
            for name, (label, path) in copies.items()
        }
    )
    answer = client.post("/upload-data", data=body, content_type="application/zip", headers=AUTH)
    assert answer.status_code == 201, answer.get_json()
    result = answer.get_json()
    assert len(result["leaks"]) <= 3, result["leaks"]  # measured: 0
    near = {row["file"]: row for row in result["near_duplicates"]}
    print(f"{len(result['leaks'])} leaks, {len(near)} near-duplicates of 30 training copies")
    assert len(near) >= 27, len(near)  # measured: 29
    conflicts = {name for name, row in near.items() if row["conflict"]}
    assert conflicts == {Path(name).name for name in wrong} & set(near)
    issues = client.get("/data/issues", headers=AUTH).get_json()
    assert {row["file"] for row in issues["near_duplicates"]} == set(near)
    # none of them is stored in the test share, where it would judge a model on its twin
    rows = manifest.read(project.data_dir / "uploads" / result["batch"])
    shares = {row["file"]: row["split"] for row in rows}
    assert {shares[name] for name in near} == {"train"}, shares
    said = audit.summary(audit.counts(project.data_dir / "uploads", search=True))
    assert f"{len(near)} near-duplicates" in said and f"{len(conflicts)} of them" in said


def test_the_issues_need_the_token_and_an_unknown_batch_is_404(client):
    assert client.get("/data/issues").status_code == 401
    missing = client.get("/data/issues?batch=20260101-000000-abcdef", headers=AUTH)
    assert missing.status_code == 404 and "no audit" in missing.get_json()["message"]
    assert client.get("/data/issues?batch=../../etc", headers=AUTH).status_code == 404
    nothing = client.get("/data/issues", headers=AUTH).get_json()
    assert nothing["state"] == "done" and nothing["model_version"] is None
    assert nothing["label_issues"] == nothing["leaks"] == nothing["near_duplicates"] == []
    gone = "/uploads/files/uploads/20260101-000000-abcdef/3/x.png"
    assert client.delete(gone).status_code == 401
    assert client.patch(gone, json={"label": "3"}).status_code == 401
    assert client.delete(gone, headers=AUTH).status_code == 404
    assert client.patch(gone, json={"label": "3"}, headers=AUTH).status_code == 404


def test_copies_inside_one_upload_share_one_split(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "uploads").mkdir(parents=True)
    original = png(5, size=24)
    with Image.open(io.BytesIO(original)) as image:
        bigger = image.resize((48, 48), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        bigger.save(buffer, format="PNG")
    files = [("a", f"{i}.png", png(i, size=24)) for i in range(40)]
    files += [("a", "copy.png", buffer.getvalue())]
    report = uploads.store_upload(
        files, data_dir / "uploads", uploads.HashIndex(data_dir), test_share=0.5, min_test=0
    )
    rows = {row["file"]: row for row in report.accepted}
    assert rows["copy.png"]["split"] == rows["5.png"]["split"]
    [twin] = report.near_duplicates
    assert twin["file"] == "copy.png" and twin["duplicate_of"] == "this upload: 5.png"


def test_a_blank_image_is_nobodys_near_duplicate():
    blank = neardup.fingerprint(Image.new("L", (16, 16), 128))
    assert not blank.any()
    assert neardup.duplicates(blank[None], blank[None]) == []
    assert audit.BATCH_NAME.match(uploads.new_batch_name())


@pytest.mark.slow  # a label check in the background: kept out of make test-fast
def test_an_upload_with_twenty_wrong_labels_lists_them_as_label_issues(client, project):
    rng = np.random.default_rng(5)
    chosen = []
    for class_dir in sorted(p for p in project.train_dir.iterdir() if p.is_dir()):
        chosen += [(class_dir.name, path) for path in sorted(class_dir.glob("*.png"))[:20]]
    wrong = set(rng.choice(len(chosen), 20, replace=False).tolist())
    entries, truth = {}, {}
    for index, (label, path) in enumerate(chosen):
        given = str((int(label) + 1 + rng.integers(9)) % 10) if index in wrong else label
        name = f"{index:03d}.jpg"
        entries[f"{given}/{name}"] = altered(path, rng)
        truth[name] = (label, index in wrong)
    for index in range(5):  # not digits at all: the unknown answer's outliers
        noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        entries[f"5/noise-{index}.png"] = buffer.getvalue()
    answer = client.post(
        "/upload-data", data=zipped(entries), content_type="application/zip", headers=AUTH
    )
    assert answer.status_code == 201, answer.get_json()
    batch = answer.get_json()["batch"]

    def checked():
        found = client.get(f"/data/issues?batch={batch}", headers=AUTH).get_json()
        return found if found["state"] == "done" else None

    found = wait_for(checked, 120, "the label check")
    assert found["model_version"] == "v0001", found
    outliers = [row["file"] for row in found["outliers"]]
    noise = [name for name in outliers if name.startswith("noise-")]
    print(f"outliers: {len(noise)} of 5 noise images, {len(outliers) - len(noise)} of 200 digits")
    # measured: 5 of 5 and 13 of 200 digits: the unknown answer's threshold calls 5 % of
    # held-out images unknown (UNKNOWN_FALSE_RATE), resized JPEG copies a little more
    assert len(noise) >= 4 and len(outliers) - len(noise) <= 24, found["outliers"]
    flagged = {
        issue["file"]: issue["suggested_label"]
        for issue in found["label_issues"]
        if not issue["file"].startswith("noise-")
    }
    caught = [name for name in flagged if truth[name][1]]
    right = [name for name in caught if flagged[name] == truth[name][0]]
    false = [name for name in flagged if not truth[name][1]]
    print(
        f"label issues: {len(caught)} of 20 wrong labels ({len(right)} with the right "
        f"suggestion), {len(false)} of 180 right labels flagged"
    )
    # measured: 20 of 20 (20 right suggestions), 0 of 180; the issue's bar below
    assert len(caught) >= 18 and len(right) >= 16 and len(false) <= 8, (caught, right, false)
    # accepting a suggestion is one call per image; the issue is gone from the list after it
    first = found["label_issues"][0]
    bad = client.patch(f"/uploads/files/{first['stored_as']}", json={"label": "a/b"}, headers=AUTH)
    assert bad.status_code == 422, bad.get_json()
    for issue in found["label_issues"]:
        where = f"/uploads/files/{issue['stored_as']}"
        moved = client.patch(where, json={"label": issue["suggested_label"]}, headers=AUTH)
        assert moved.status_code == 200, moved.get_json()
        assert moved.get_json()["stored_as"].split("/")[2] == issue["suggested_label"]
    after = client.get(f"/data/issues?batch={batch}", headers=AUTH).get_json()
    assert after["label_issues"] == []
    trail = client.get("/uploads/audit", headers=AUTH).get_json()
    assert [e["operation"] for e in trail[: len(flagged)]] == ["relabel-file"] * len(flagged)


@pytest.mark.slow  # a label check in the background: kept out of make test-fast
def test_the_harmful_upload_is_flagged_before_any_retrain_and_one_call_removes_it(client, project):
    """Every training image of '3', altered, uploaded as '8' (the gate used to be the first to
    notice, after a retrain was paid for, and the images stayed)."""
    rng = np.random.default_rng(6)
    threes = sorted((project.train_dir / "3").glob("*.png"))
    body = zipped({f"8/{path.stem}.jpg": altered(path, rng) for path in threes})
    answer = client.post("/upload-data", data=body, content_type="application/zip", headers=AUTH)
    assert answer.status_code == 201, answer.get_json()
    batch = answer.get_json()["batch"]
    found = wait_for(
        lambda: (
            (f := client.get(f"/data/issues?batch={batch}", headers=AUTH).get_json())
            and f["state"] == "done"
            and f
        ),
        120,
        "the label check",
    )
    suggested = [issue["suggested_label"] for issue in found["label_issues"]]
    conflicts = [row for row in found["near_duplicates"] if row["conflict"]]
    print(
        f"{len(threes)} threes uploaded as '8': {len(suggested)} label issues "
        f"({suggested.count('3')} suggesting '3'), {len(conflicts)} label conflicts"
    )
    # measured: 146 of 146 flagged, all suggesting '3'; 145 label conflicts
    assert suggested.count("3") >= 0.9 * len(threes) and len(conflicts) >= 0.9 * len(threes)
    removed = client.delete(f"/uploads/batches/{batch}", headers=AUTH)
    assert removed.status_code == 200, removed.get_json()
    after = client.get(f"/data/issues?batch={batch}", headers=AUTH)
    assert after.status_code == 404, "the deleted batch's audit goes with it"
    assert client.get("/data/issues", headers=AUTH).get_json()["label_issues"] == []


@pytest.mark.slow  # a worker process and a scan of every training image
def test_a_scan_finds_wrong_labels_and_test_leaks_in_the_training_set(client, project, tmp_path):
    """Five training '1's moved into '7' and three test images copied into the training set:
    the scan (a job of the worker) lists the five as label issues and the three as leaks."""
    train, test = project.train_dir, project.data_dir / "test"
    moved = sorted((train / "1").glob("*.png"))[:5]
    for path in moved:
        path.rename(train / "7" / f"moved-{path.name}")
    copied = sorted((test / "4").glob("*.png"))[:3]
    for path in copied:
        shutil.copy(path, train / "4" / f"copied-{path.name}")
    queued = client.post("/data/issues/scan", headers=AUTH)
    assert queued.status_code == 202, queued.get_json()
    job = queued.get_json()
    assert job["kind"] == "scan" and job["state"] == "queued"
    again = client.post("/data/issues/scan", headers=AUTH)
    assert again.status_code == 409 and again.get_json()["job"]["id"] == job["id"]
    assert client.post("/data/issues/scan").status_code == 401
    assert client.get("/data/issues", headers=AUTH).get_json()["state"] == "running"
    with running_worker(project, tmp_path):
        ended = wait_for(
            lambda: (
                (j := client.get(f"/retrain/{job['id']}").get_json())["state"] != "queued"
                and j["state"] != "running"
                and j
            ),
            180,
            "the scan job",
        )

        def scanned():
            found = client.get("/data/issues", headers=AUTH).get_json()
            return found if found["state"] == "done" else None

        found = wait_for(scanned, 180, "the scan")
    assert ended["state"] == "done" and ended["error"] is None, ended
    assert ended["result"]["training_leaks"] >= 3, ended["result"]
    issues = {row["stored_as"]: row for row in found["label_issues"]}
    caught = [f"train/7/moved-{path.name}" for path in moved]
    suggested = [issues[place]["suggested_label"] for place in caught if place in issues]
    leaks = {row["stored_as"]: row["test_file"] for row in found["leaks"]}
    print(f"scan: {len(suggested)} of 5 moved '1's flagged, {len(issues)} issues, leaks {leaks}")
    # measured: 5 of 5 (all suggesting '1') and 3 of 3 leaks
    assert suggested.count("1") >= 4, found["label_issues"][:10]
    for path in copied:
        assert leaks.get(f"train/4/copied-{path.name}") == f"test/4/{path.name}", leaks
    assert len(issues) <= 0.03 * 1437 + 5, "few of the right labels are flagged"


def test_a_label_check_left_running_by_a_process_that_died_is_reported_failed(tmp_path):
    uploads_dir = tmp_path / "uploads"
    batch = "20260101-000000-abcdef"
    started = datetime.now(UTC) - timedelta(seconds=audit.STALE_S + 60)
    check = {"state": "running", "model_version": "v0001", "computed_at": started.isoformat()}
    audit.record_label_check(uploads_dir, batch, check)
    found = audit.read(uploads_dir, batch)
    assert found["state"] == "done" and "interrupted" in found["notes"][0], found
    audit.record_label_check(
        uploads_dir, batch, {**check, "computed_at": datetime.now(UTC).isoformat()}
    )
    assert audit.read(uploads_dir, batch)["state"] == "running", "a recent one still runs"


def test_the_label_checks_sample_of_training_images_takes_a_class_of_one_image(
    tmp_path, monkeypatch
):
    """Stratified sampling refuses a class of one image: the sample must not fail on it."""
    from imgclf.loop import labelcheck

    for label, count in (("a", 6), ("b", 6), ("c", 1)):
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{i}.png").write_bytes(png(i + 10 * ord(label)))
    monkeypatch.setattr(labelcheck, "MAX_REFERENCE", 8)
    paths, labels = labelcheck._reference(tmp_path, exclude="none")
    assert len(paths) == len(labels) == 8
