"""The store on SQLite and on a real PostgreSQL server: jobs, liveness, schema, statistics."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from imgclf import store
from imgclf.config import ConfigError
from imgclf.store import JobConflict, JobState, Store, database, migrations

ENGINES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db(database_url) -> Store:
    migrations.upgrade(database_url)
    return Store(database_url)


@ENGINES
def test_one_live_job_per_kind_is_enforced_by_the_database(db, database_url):
    job = db.create_job("retrain", {"epochs": 1}, "/tmp/run")
    with pytest.raises(JobConflict) as conflict:
        db.create_job("retrain", {}, "/tmp/run2")
    assert conflict.value.job["id"] == job["id"]
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as connection:
        connection.execute(  # even a write that goes around the store's code is refused
            database.jobs.insert().values(
                id="x", kind="retrain", state="running", parameters="{}", created_at=0
            )
        )
    assert db.create_job("other-kind", {}, "/tmp/run3")["state"] == JobState.QUEUED


@ENGINES
def test_a_queued_job_is_claimed_by_exactly_one_of_many_workers(db, database_url):
    job = db.create_job("retrain", {}, "/tmp/run")
    stores = [Store(database_url) for _ in range(4)]
    claimed, start = [], threading.Barrier(4)

    def claim(worker_store, pid):
        start.wait()
        claimed.append(worker_store.claim_job("retrain", pid=pid, host="host-b"))

    threads = [threading.Thread(target=claim, args=(s, 100 + i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [c for c in claimed if c is not None]
    assert len(winners) == 1 and winners[0]["id"] == job["id"]
    running = db.job(job["id"])
    assert running["state"] == JobState.RUNNING and running["host"] == "host-b"


@ENGINES
def test_heartbeats_are_judged_by_the_databases_clock_not_the_hosts(db, monkeypatch):
    """A worker whose host clock is two hours behind claims a job and beats: the API, on a
    host with the right time, must not judge it dead (with the hosts' clocks it would)."""
    real = time.time
    job = db.create_job("retrain", {}, "/tmp/a")
    monkeypatch.setattr(time, "time", lambda: real() - 7200)  # the worker's host
    db.claim_job("retrain", pid=1, host="slow-clock-host")
    db.update_job(job["id"], heartbeat=True, progress={"stage": "fine-tuning"})
    monkeypatch.setattr(time, "time", real)  # the API's host
    assert db.job(job["id"])["state"] == JobState.RUNNING
    assert abs(db.job(job["id"])["heartbeat_at"] - real()) < 60


@ENGINES
def test_a_dead_worker_fails_its_job_by_pid_here_and_by_heartbeat_elsewhere(db):
    here = db.create_job("retrain", {}, "/tmp/a")
    db.claim_job("retrain", pid=2**22 + 12345)  # no such process on this host
    assert db.job(here["id"])["state"] == JobState.FAILED
    assert "is gone" in db.job(here["id"])["error"]

    there = db.create_job("retrain", {}, "/tmp/b")
    db.claim_job("retrain", pid=2**22 + 12345, host="another-host")
    assert db.job(there["id"])["state"] == JobState.RUNNING  # that pid means nothing here
    db.update_job(there["id"], heartbeat_at=time.time() - store.HEARTBEAT_TIMEOUT_S - 1)
    failed = db.job(there["id"])
    assert failed["state"] == JobState.FAILED and "heartbeats" in failed["error"]
    assert not db.finish_job(there["id"], JobState.PROMOTED, {}, None)  # stays failed

    waiting = db.create_job("retrain", {}, "/tmp/c")
    db.update_job(waiting["id"], heartbeat_at=time.time() - store.QUEUE_TIMEOUT_S - 1)
    assert "imgclf worker" in db.job(waiting["id"])["error"]


@ENGINES
def test_progress_log_and_outcome_live_in_the_database(db):
    job = db.create_job("retrain", {}, "/tmp/run")
    db.claim_job("retrain", pid=1, host="gpu-box")
    db.update_job(job["id"], progress={"stage": "fine-tuning", "epoch": 2}, log_tail="a\nb\n")
    assert db.job(job["id"])["progress"]["epoch"] == 2
    assert db.job(job["id"])["log_tail"] == ["a", "b"]
    assert db.finish_job(job["id"], JobState.PROMOTED, {"version": "v0002"}, None)
    assert db.job(job["id"])["result"]["version"] == "v0002"
    assert db.job_outcomes() == {"promoted": 1}


@ENGINES
def test_prediction_log_feedback_and_statistics(db):
    now = time.time()
    rows = [
        {"id": "a", "created_at": now, "label": "3", "latency_ms": 2.0, "confidence": 0.9},
        {"id": "b", "created_at": now, "label": "7", "latency_ms": 4.0, "confidence": 0.8},
        {"id": "c", "created_at": now, "latency_ms": 1.0, "error": "not an image"},
    ]
    db.log_predictions(rows)
    assert db.add_feedback("a", "3", trusted=True)["correct"]
    assert not db.add_feedback("b", "1", trusted=True)["correct"]
    with pytest.raises(store.StoreError, match="no prediction"):
        db.add_feedback("c", "3")
    stats = db.statistics()
    assert stats["predictions"] == 2 and stats["failed_predictions"] == 1
    assert stats["by_class"] == {"3": 1, "7": 1} and stats["feedback"]["accuracy"] == 0.5
    # once per prediction: a client's second label is refused, the admin's replaces it; the
    # accuracy counts the admin's (trusted) feedback only
    with pytest.raises(store.FeedbackExists, match="only the admin token"):
        db.add_feedback("b", "7")
    assert db.add_feedback("b", "7", trusted=True)["correct"]
    assert db.statistics()["feedback"] == {
        "count": 2, "trusted": 2, "accuracy": 1.0, "client_accuracy": 1.0
    }  # fmt: skip
    [point] = stats["series"]["points"]
    assert point["requests"] == 3 and point["errors"] == 1 and point["latency_p50_ms"] == 3.0


@ENGINES
def test_a_database_whose_schema_is_behind_is_refused_with_the_command(database_url):
    with pytest.raises(ConfigError, match="imgclf db upgrade"):
        Store(database_url)
    assert migrations.upgrade(database_url) == (None, migrations.head())
    assert migrations.upgrade(database_url)[0] == migrations.head()  # a second run is a no-op


def test_bad_database_urls_are_named(postgres_server):
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Store("not a url")
    with pytest.raises(ConfigError, match="mysql"):
        Store("mysql://localhost/x")
    with pytest.raises(ConfigError, match="cannot reach"):
        Store("postgresql+psycopg://postgres@127.0.0.1:1/none")


def test_each_test_database_is_new_however_many_are_made(postgres_server):
    # Names were once drawn from free ports, which repeat: CI met "database already exists".
    urls = [postgres_server.create_database() for _ in range(20)]
    assert len(set(urls)) == 20


def test_a_sqlite_file_from_before_migrations_is_upgraded(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(
            "CREATE TABLE predictions (id TEXT PRIMARY KEY, created_at REAL NOT NULL, "
            "latency_ms REAL NOT NULL); CREATE TABLE feedback (id INTEGER PRIMARY KEY, "
            "prediction_id TEXT NOT NULL, true_label TEXT NOT NULL, created_at REAL NOT NULL);"
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL,"
            " parameters TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, "
            "finished_at REAL, heartbeat_at REAL, pid INTEGER, run_dir TEXT, result TEXT, "
            "error TEXT); INSERT INTO jobs VALUES ('j1', 'retrain', 'promoted', '{}', 1, 1, 2,"
            " 2, 5, '/tmp', '{}', NULL);"
        )
    url = f"sqlite:///{path}"
    assert migrations.upgrade(url) == (None, migrations.head())
    assert Store(url).job("j1")["state"] == JobState.PROMOTED
