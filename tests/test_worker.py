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

from imgclf.loop import jobs
from imgclf.model import registry
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
        again = jobs.queue_retrain(
            store, project, {"epochs": 1, "patience": 1, "tolerance": 0.2, "max_recall_drop": 1.0}
        )
        done = wait_for(
            lambda: (j := store.job(again["id"]))["state"] not in ("queued", "running") and j,
            240,
            "the next job",
        )
        assert done["state"] == JobState.PROMOTED, done
    finally:
        second.kill()
        second.wait()


def test_the_installed_console_script_runs_a_retrain_with_no_backend_set(project, tmp_path):
    """``imgclf worker --once`` as installed, with only PATH, HOME and the project's settings:
    the package picks Keras' backend itself (before, every job failed on 'tensorflow')."""
    script = Path(sys.executable).parent / "imgclf"
    assert script.is_file(), "make setup installs the imgclf console script"
    store = Store(project.database_url)
    job = jobs.queue_retrain(
        store, project, {"epochs": 1, "patience": 1, "tolerance": 0.2, "max_recall_drop": 1.0}
    )
    bare = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **project.as_environment()}
    assert "KERAS_BACKEND" not in bare
    result = subprocess.run(
        [str(script), "worker", "--once"],
        env=bare,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    done = store.job(job["id"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert done["state"] in (JobState.PROMOTED, JobState.REJECTED), done
    assert "tensorflow" not in (done.get("error") or "")


def memory_cgroup(limit_bytes: int) -> Path | None:
    """A fresh memory cgroup (v1 or v2) limited to ``limit_bytes``, or None where this process
    cannot make one (not root, no writable cgroup file system)."""
    for root, limit_file in (
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
        (Path("/sys/fs/cgroup"), "memory.max"),
    ):
        if not (root / "cgroup.procs").is_file() or not os.access(root, os.W_OK):
            continue
        group = root / f"imgclf-test-{os.getpid()}"
        try:
            group.mkdir(exist_ok=True)
            (group / limit_file).write_text(str(limit_bytes))
        except OSError:
            continue
        return group
    return None


def test_a_retrain_killed_for_memory_fails_saying_it_ran_out_of_memory(project, tmp_path):
    group = memory_cgroup(450 * 1024 * 1024)
    if group is None:
        pytest.skip("no writable memory cgroup here to run a worker out of memory in")
    store = Store(project.database_url)
    job = jobs.queue_retrain(store, project, {"epochs": 2, "batch_size": 1024})
    log = open(tmp_path / "oom-worker.log", "w")
    try:
        worker = subprocess.run(
            [sys.executable, "-m", "imgclf.cli", "worker", "--once"],
            env={**os.environ, **project.as_environment()},
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
            timeout=300,
        )
    finally:
        log.close()
        if not (group / "cgroup.procs").read_text().strip():  # every process in it has ended
            group.rmdir()
    failed = store.job(job["id"])
    print(f"worker exit {worker.returncode}; job: {failed['state']}: {failed['error']}")
    assert failed["state"] == JobState.FAILED
    assert failed["error"].startswith("out of memory: the system killed the notebook's kernel")
    assert registry.list_versions(project.models_dir) == ["v0001"]
