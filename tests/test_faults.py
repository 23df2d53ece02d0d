"""Faults caused for real lose nothing: a stopped PostgreSQL, a SQLite file locked by another
writer, a killed process, a malformed job row, a crashing service under the launcher."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import TOKEN, fill
from PIL import Image

from devkit import launch
from imgclf.data import imagebytes
from imgclf.store import Store, migrations
from imgclf.store.database import jobs, predictions
from imgclf.store.journal import Journal
from imgclf.store.logwriter import PredictionLogWriter
from serve.app import create_app


def row(n: int) -> dict:
    return {"id": uuid.uuid4().hex, "created_at": time.time(), "latency_ms": 1.0 + n, "label": "3"}


def stored(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(sa.select(predictions.c.id)).scalars())
    finally:
        engine.dispose()


def test_a_killed_writers_journal_is_adopted_and_replayed_exactly_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'imgclf.db'}"
    migrations.upgrade(url)
    folder = tmp_path / "journal"
    rows = [row(n) for n in range(50)]
    # a process appends 50 rows, tears a 51st mid-line, and is killed: no flush, no atexit
    script = textwrap.dedent(f"""
        import json, os, signal
        from imgclf.store.journal import Journal
        journal = Journal({str(folder)!r})
        journal.append({rows!r})
        os.write(journal._fd, b'{{"id": "torn')
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(folder.glob("*.jsonl"))
    assert len(left) == 1
    kept = left[0].read_bytes()

    writer = PredictionLogWriter(Store(url), folder)
    writer.flush()  # adopts the dead instance's segment
    assert stored(url) == {r["id"] for r in rows}
    assert writer.replayed == 50 and writer.journal.torn_lines == 1
    assert not list(folder.glob("*.jsonl")) and len(list(folder.glob("*.lock"))) == 1  # ours

    # a process killed after the commit but before the delete: its segment is replayed again
    (folder / "gone-1-x.lock").touch()
    (folder / "gone-1-x.000000001.jsonl").write_bytes(kept)
    writer._adopt_at = 0.0
    writer.flush()
    assert stored(url) == {r["id"] for r in rows}  # each row once (the id is the key)
    assert not (folder / "gone-1-x.lock").exists()


def test_a_live_writers_journal_is_not_adopted(tmp_path):
    folder = tmp_path / "journal"
    owner, other = Journal(folder), Journal(folder)
    owner.append([row(1)])
    owner.seal()
    assert list(other.orphans()) == []  # its process holds its lock
    owner.close()


def test_rows_wait_in_memory_without_a_journal_and_are_written_when_the_database_is_back(
    tmp_path,
):
    url = f"sqlite:///{tmp_path / 'imgclf.db'}"
    migrations.upgrade(url)
    store = Store(url)
    writer = PredictionLogWriter(store, None)
    locker = sa.create_engine(url, connect_args={"timeout": 0})
    store.engine.dispose()
    store.engine = sa.create_engine(url, connect_args={"timeout": 0.2})  # locked: fails at once
    with locker.connect() as holding:
        holding.exec_driver_sql("BEGIN EXCLUSIVE")
        writer._pending.extend([row(n) for n in range(5)])
        writer.flush()
        assert writer.status()["database"] == "down" and len(writer._pending) == 5
        holding.exec_driver_sql("ROLLBACK")
    writer.flush()
    assert len(stored(url)) == 5 and writer.status()["database"] == "ok"


# ------------------------------------------------------------------------- worker, launcher
def test_a_malformed_or_injected_job_row_fails_that_job_naming_why_and_runs_nothing(project):
    now = time.time()
    marker = project.reports_dir / "injected"
    injected = {f"x = 1\nopen({str(marker)!r}, 'w')\ny": 1, "epochs": 1}  # code as a name
    bad = [
        {"id": "norundir", "parameters": "{}", "run_dir": None},
        {"id": "notjson", "parameters": "{not json", "run_dir": str(project.reports_dir / "x")},
        {"id": "injected", "parameters": json.dumps(injected), "run_dir": str(marker.parent)},
        {"id": "range", "parameters": '{"epochs": 1000}', "run_dir": str(marker.parent)},
    ]
    engine = sa.create_engine(project.database_url)
    for values in bad:  # one at a time: one retrain may be live
        with engine.begin() as connection:
            connection.execute(
                jobs.insert().values(
                    kind="retrain", state="queued", created_at=now, heartbeat_at=now, **values
                )
            )
        ran = subprocess.run(
            [sys.executable, "-m", "imgclf.cli", "worker", "--once"],
            env={**os.environ, **project.as_environment()},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr[-2000:]
    with engine.connect() as connection:
        rows = {r.id: r for r in connection.execute(jobs.select())}
    engine.dispose()
    assert rows["norundir"].state == "failed" and "no run folder" in rows["norundir"].error
    assert rows["notjson"].state == "failed" and "parameters" in rows["notjson"].error
    # the worker checks parameters with the API's schema before anything runs
    assert rows["injected"].state == "failed" and "Unknown field" in rows["injected"].error
    assert "open(" in rows["injected"].error and not marker.exists()  # no code ran
    assert rows["range"].state == "failed" and "'epochs'" in rows["range"].error


def test_the_launcher_restarts_a_crashed_process_then_gives_up(monkeypatch, capsys):
    monkeypatch.setattr(launch, "MAX_RESTARTS", 2)
    crashing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    lasting = [sys.executable, "-c", "import time; time.sleep(600)"]
    supervisor = launch.Supervisor({"api": lasting, "worker": crashing}, dict(os.environ))
    first_api = supervisor.processes["api"].pid
    os.kill(first_api, signal.SIGKILL)  # a killed API is started again
    status = supervisor.run()
    said = capsys.readouterr().err
    assert status == 3
    assert "worker exited (status 3); starting it again (1 of 2" in said
    assert "worker exited (status 3) 3 times" in said and "stopping everything" in said
    assert "api exited (status -9); starting it again" in said
    assert supervisor.processes["api"].pid != first_api
    assert all(p.poll() is not None for p in supervisor.processes.values())


def test_the_journal_is_json_lines_of_the_tables_columns(tmp_path):
    journal = Journal(tmp_path)
    journal.append([row(1)])
    segment = journal.seal()
    assert json.loads(segment.read_text())["label"] == "3"
    journal.close()


# ---------------------------------------------------------------------------------- disk
def exif_with_maker() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "camera"
    return exif.tobytes()


def encoded(image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mode = "P" if image_format == "GIF" else "RGB"
    Image.fromarray(pixels).convert(mode).save(buffer, format=image_format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image_format, options",
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("BMP", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("JPEG", {"exif": exif_with_maker()}),
    ],  # fmt: skip
)
def test_the_end_of_an_image_is_found_and_what_follows_is_not_kept(image_format, options):
    image = encoded(image_format, **options)
    junk = b"\xff\xd9IEND\x3b" + bytes(range(256)) * 40  # markers of every format, then noise
    assert imagebytes.encoded_length(image + junk, image_format) == len(image)
    assert imagebytes.trimmed(image, image_format) == image
    with pytest.raises(imagebytes.Malformed):
        imagebytes.encoded_length(image[: len(image) // 2], image_format)


def test_kept_images_stay_within_the_byte_budget_and_junk_is_not_kept(project, monkeypatch):
    """30 images of about 3 MB each (noise PNGs, and small PNGs padded with 3 MB of junk)
    through /predict with RETAIN_MAX_MB=20: at most 20 MB is kept, the padded ones small."""
    monkeypatch.setenv("RETAIN_MAX_MB", "20")
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN", TOKEN)
    client = create_app(project).test_client()
    rng = np.random.default_rng(2)
    small = next((project.test_dir / "3").glob("*.png")).read_bytes()
    payloads = []
    for number in range(30):
        if number % 2:
            payloads.append(small + rng.bytes(3_000_000))  # a valid PNG, then junk
        else:
            noise = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
            payloads.append(buffer.getvalue())
    for payload in payloads:
        answer = client.post("/predict", data=payload, content_type="image/png")
        assert answer.status_code == 200, answer.get_json()
    keeper = client.application.extensions["imgclf"].keeper
    keeper.flush()
    kept = [p for p in (project.data_dir / "retained").glob("??/*") if not p.name.startswith(".")]
    sizes = sorted(p.stat().st_size for p in kept)
    sent = sum(map(len, payloads)) / 2**20
    print(f"{len(kept)} kept, {sum(sizes) / 2**20:.1f} MB of {sent:.0f} MB sent")
    assert sum(sizes) <= 20 * 2**20
    assert sizes[0] < 1000  # a junk-padded PNG is kept without its junk
    newest = hashlib.sha256(payloads[-1]).hexdigest()
    assert keeper.has(newest) and len(keeper.read(newest)) == len(small)  # oldest go first
    assert len(kept) >= 10  # about 5 large ones (3 MB) within the 90 % evicted down to


def test_a_full_uploads_disk_answers_507_leaves_nothing_and_works_once_freed(
    project, monkeypatch, tmpfs
):
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN", TOKEN)
    uploads_dir = tmpfs(project.data_dir / "uploads", "8m")
    client = create_app(project).test_client()
    rng = np.random.default_rng(3)
    images = []
    for number in range(6):  # about 200 KB each: more than what is left on the disk
        buffer = io.BytesIO()
        noise = rng.integers(0, 256, (260, 260, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
        images.append((f"noise-{number}.png", buffer.getvalue()))

    def send():
        return client.post(
            "/upload-data",
            data={"label": "3", "files": [(io.BytesIO(b), name) for name, b in images]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )

    fill(uploads_dir)
    os.truncate(uploads_dir / "filler", 8 * 2**20 - 300_000)  # 300 KB free: one image fits
    refused = send()
    assert refused.status_code == 507, refused.get_json()
    assert "disk is full" in refused.get_json()["message"]
    left = sorted(p.relative_to(uploads_dir).as_posix() for p in uploads_dir.rglob("*"))
    assert left == [".upload.lock", "filler"], left  # no partial batch, no staging folder
    (uploads_dir / "filler").unlink()
    stored_now = send()
    assert stored_now.status_code == 201, stored_now.get_json()
    assert stored_now.get_json()["counts"]["accepted"] == 6


@pytest.mark.parametrize("damage", ["crc", "deflate"])
def test_a_zip_with_a_corrupt_member_is_refused_naming_it(project, monkeypatch, damage):
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN", TOKEN)
    client = create_app(project).test_client()
    images = [p.read_bytes() for p in sorted((project.test_dir / "3").glob("*.png"))[:3]]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for number, image in enumerate(images):
            zipped.writestr(f"3/{number}.png", image + bytes(200))  # compressible tail
    data = bytearray(archive.getvalue())
    second = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("3/1.png")
    start = second.header_offset + 30 + len(second.filename)  # its compressed data
    if damage == "crc":
        data[start + second.compress_size - 1] ^= 0xFF  # the stream ends right, the CRC not
    else:
        data[start : start + 8] = b"\xff" * 8  # not a deflate stream any more
    before = sorted(p.as_posix() for p in project.data_dir.rglob("*"))
    answer = client.post(
        "/upload-data",
        data={"zip": (io.BytesIO(bytes(data)), "digits.zip")},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 400, answer.get_json()
    message = answer.get_json()["message"]
    assert "'3/1.png'" in message and "cannot be read" in message, message
    after = {p.as_posix() for p in project.data_dir.rglob("*")}
    uploads_dir = project.data_dir / "uploads"
    assert after - set(before) <= {
        uploads_dir.as_posix(),
        (uploads_dir / ".upload.lock").as_posix(),
    }


def test_stats_read_a_bounded_window_and_old_predictions_are_pruned_in_batches(tmp_path):
    url = f"sqlite:///{tmp_path / 'imgclf.db'}"
    migrations.upgrade(url)
    store = Store(url)
    now = time.time()
    old = [{**row(n), "created_at": now - 10_000 - n} for n in range(250)]
    new = [{**row(n), "created_at": now - n, "label": str(n % 2)} for n in range(50)]
    store.log_predictions(old + new)
    store.add_feedback(old[-1]["id"], "3")  # labelled: kept by pruning
    stats = store.statistics(rows=40)
    assert stats["window"]["rows"] == 40 and stats["predictions"] == 40
    assert stats["by_class"] == {"0": 20, "1": 20}  # the newest 40 only
    assert store.prune(now - 5_000, batch=100) == 249  # three batches
    assert len(stored(url)) == 51
    assert store.statistics()["window"]["rows"] == 51


def test_a_notebook_kernel_gets_no_secret(tmp_path, monkeypatch):
    import nbformat
    import papermill

    from imgclf import config

    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN", "the-admin-token")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:hunter2@db/x")
    monkeypatch.setenv("GF_SECURITY_ADMIN_PASSWORD", "grafana-secret")
    notebook = nbformat.v4.new_notebook()
    seen = tmp_path / "seen.json"
    notebook.cells = [nbformat.v4.new_code_cell(
        f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))")]  # fmt: skip
    nbformat.write(notebook, tmp_path / "env.ipynb")
    with config.secrets_hidden() as hidden:
        papermill.execute_notebook(
            str(tmp_path / "env.ipynb"),
            str(tmp_path / "out.ipynb"),
            kernel_name="python3",
            progress_bar=False,
        )
    environment = json.loads(seen.read_text())
    assert {"IMGCLF_ADMIN_TOKEN", "DATABASE_URL", "GF_SECURITY_ADMIN_PASSWORD"} <= set(hidden)
    assert not set(hidden) & set(environment)
    assert "hunter2" not in seen.read_text() and "the-admin-token" not in seen.read_text()
    assert os.environ["IMGCLF_ADMIN_TOKEN"] == "the-admin-token"  # put back after
