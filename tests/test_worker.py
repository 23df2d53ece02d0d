"""The job worker: one killed mid-job leaves the job failed, the model kept, the queue free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for

from imgclf import jobs, registry
from imgclf.store import JobState, Store

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    """Every descendant of a process (from /proc)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            for child in task.read_text().split():
                found.add(int(child))
                todo.append(int(child))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def start_worker(project, tmp_path, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "imgclf.cli", "worker"],
        env={**os.environ, **project.as_environment()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_a_worker_killed_mid_job_fails_it_keeps_the_model_and_frees_the_queue(
    project, worker, tmp_path
):
    store = Store(project.database_url)
    job = jobs.queue_retrain(store, project, {"epochs": 60, "patience": 60})

    def training():
        current = store.job(job["id"])
        return current["state"] == JobState.RUNNING and current["progress"].get("epoch")

    wait_for(training, 180, "the job to reach its first epoch")
    assert store.job(job["id"])["pid"] == worker.pid
    descendants = children(worker.pid)  # the notebook's kernel among them
    assert descendants, "the worker runs the notebook's kernel as its child"
    # as if the worker ran on another host: its pid means nothing here, the heartbeat tells
    store.update_job(job["id"], host="another-host")
    killed_at = time.time()
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    failed = wait_for(
        lambda: (j := store.job(job["id"]))["state"] == JobState.FAILED and j, 60, "failed"
    )
    failed_after = time.time() - killed_at
    print(f"job failed {failed_after:.1f} s after SIGKILL: {failed['error']}")
    assert failed_after <= 60 and "stopped sending heartbeats" in failed["error"]
    wait_for(lambda: not any(alive(pid) for pid in descendants), 15, "the kernel to exit")
    assert registry.current_version(project.models_dir) == "v0001"
    assert registry.list_versions(project.models_dir) == ["v0001"]

    second = start_worker(project, tmp_path, "second-worker")
    try:
        again = jobs.queue_retrain(store, project, {"epochs": 1, "patience": 1, "tolerance": 0.2})
        done = wait_for(
            lambda: (j := store.job(again["id"]))["state"] not in ("queued", "running") and j,
            240,
            "the next job",
        )
        assert done["state"] == JobState.PROMOTED, done
    finally:
        second.kill()
        second.wait()
