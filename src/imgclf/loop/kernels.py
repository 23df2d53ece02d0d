"""The retrain notebook's kernel: started (with retries), stopped, and why it died.

A job's notebook runs in a Jupyter kernel started by a child process of the worker
(``run_notebook``): what running a notebook imports leaves with that process, so the idle
worker does not grow by a job. Cancelling or finishing a job kills every kernel under the
worker and their children (``stop_kernels``), then that process. A
kernel that dies on its own is explained (``explain``): out of memory when the worker's memory
cgroup counted an OOM kill while it ran (``oom_kills``), or when a cell raised ``MemoryError``
or XLA's ``RESOURCE_EXHAUSTED``; otherwise the cell's error.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from imgclf import config, pipeline, runs
from imgclf.config import Settings
from imgclf.loop import registering

#: Where the cgroup file systems are mounted (OOM kills are counted there).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Tries at starting the notebook's kernel (jupyter_client can lose a port race).
KERNEL_START_TRIES = 3
#: After a cancel request (told by ``CANCEL_SIGNAL``: it starts no other kernel), the job's
#: process has this long to write its report, or to settle a run that had already ended.
CANCEL_GRACE_S = 60.0
#: How the worker tells its job's process that the job was cancelled.
CANCEL_SIGNAL = signal.SIGUSR1
#: How often the worker looks at its job's process.
POLL_S = 0.2

log = logging.getLogger(__name__)


class KernelDied(RuntimeError):
    """The job's notebook kernel (or the child process running it) died while it ran."""


def run_notebook(
    job: dict, settings: Settings, cancelled: threading.Event, kind: str = "retrain"
) -> registering.RegisteredRun:
    """Run the job's registering notebook in a child process (``python -m
    imgclf.loop.kernels``), so that what running it imports (papermill, nbclient, nbconvert,
    the kernel's client) leaves with it and the idle worker stays small. The child starts
    without the secrets in its environment (its kernel inherits that), reads the job and the
    settings from its standard input, answers through a pipe, and dies with the worker. A
    cancel request (the kernel already killed by ``jobs.Watcher``) is passed on
    (``CANCEL_SIGNAL``: no other kernel is started); the child then has ``CANCEL_GRACE_S`` to
    write the report, or to settle a run that had ended before the cancel (its outcome
    stands), before it is killed.

    Raises:
        pipeline.PipelineError: a cell raised, or the run could not be settled.
        KernelDied: the kernel or the child died while running.
        RuntimeError: anything else the child raised (its message).
    """
    import pickle
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    try:
        with config.secrets_hidden():
            child = subprocess.Popen(
                [sys.executable, "-m", "imgclf.loop.kernels", str(write_end), str(os.getpid())],
                stdin=subprocess.PIPE,
                pass_fds=(write_end,),
            )
    finally:
        os.close(write_end)
    level = logging.getLogger().getEffectiveLevel()
    try:
        try:
            child.stdin.write(pickle.dumps((job, settings, kind, level)))
            child.stdin.close()
        except BrokenPipeError:  # it died at once: said below, by its exit status
            pass
        answer = _answer(child, read_end, cancelled)
    finally:
        os.close(read_end)
        if child.poll() is None:
            stop_kernels()
            child.kill()
        child.wait()
    if answer is None:
        raise KernelDied(
            f"the job's process ended with {child.returncode} before answering (killed, or "
            "out of memory), its notebook's kernel with it"
        )
    what, value = answer
    if what == "ok":
        return value
    failure = {"pipeline": pipeline.PipelineError, "dead": KernelDied}.get(what, RuntimeError)
    raise failure(value)


def _answer(child, read_end: int, cancelled: threading.Event):
    """The child's ``(what, value)`` read from ``read_end`` until it closes, or None when it
    ended without one or was killed after a cancel's grace."""
    import pickle
    import select

    received, cancel_seen = [], None
    while True:
        ready, _, _ = select.select([read_end], [], [], POLL_S)
        if ready:
            chunk = os.read(read_end, 1 << 16)
            if not chunk:  # closed: the child has answered, or died
                break
            received.append(chunk)
            continue
        if cancelled.is_set():
            if cancel_seen is None:
                cancel_seen = time.monotonic()
                try:
                    child.send_signal(CANCEL_SIGNAL)
                except ProcessLookupError:
                    pass
            if time.monotonic() - cancel_seen > CANCEL_GRACE_S:
                return None
    try:
        return pickle.loads(b"".join(received))
    except (EOFError, pickle.UnpicklingError):
        return None


#: Set in the job's process when the worker says the job was cancelled (``CANCEL_SIGNAL``).
_cancelled = threading.Event()


def _child(
    job: dict, settings: Settings, kind: str, answer, parent: int, level: int = logging.INFO
) -> None:
    """The job's process: dies with the worker, logs (at the worker's ``level``) into the
    job's log and the worker's standard error, runs the notebook
    (retrying only a kernel that failed to start) and writes ``(what, value)`` to
    ``answer`` (a binary file)."""
    import ctypes
    import pickle

    signal.signal(CANCEL_SIGNAL, lambda *_: _cancelled.set())
    try:  # Linux: killed when the worker dies, as its kernel was when it ran in the worker
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides (Ctrl-C reaches both)
    from nbclient.exceptions import DeadKernelError

    handlers = [logging.FileHandler(Path(job["run_dir"]) / runs.LOG_FILE), logging.StreamHandler()]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=handlers)
    try:
        said = ("ok", _run_with_retries(job, settings, kind))
    except pipeline.PipelineError as failure:
        said = ("pipeline", str(failure))
    except DeadKernelError as failure:
        said = ("dead", str(failure))
    except Exception as failure:
        said = ("error", str(failure))
    with answer:
        answer.write(pickle.dumps(said))


def _run_with_retries(job: dict, settings: Settings, kind: str) -> registering.RegisteredRun:
    """Run the registering notebook; retry only a kernel that failed to start."""
    from nbclient.exceptions import DeadKernelError

    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            with config.secrets_hidden():
                return registering.run(
                    kind,
                    job["parameters"],
                    settings,
                    run_dir=Path(job["run_dir"]),
                    log_output=True,
                )
        except (pipeline.PipelineError, DeadKernelError):
            raise
        except Exception as failure:  # the kernel did not start (ports, timeouts)
            if _cancelled.is_set():
                raise
            if attempt == KERNEL_START_TRIES:
                raise RuntimeError(f"the notebook's kernel did not start: {failure}") from None
            log.warning("kernel start failed (%s); retrying", failure)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def kernel_processes() -> list:
    """This process's notebook kernels (``ipykernel`` children, at any depth)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("ipykernel" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # it exited while we looked
            continue
    return found


def stop_kernels() -> int:
    """Kill this process's notebook kernels and their children (e.g. decoding processes) and
    wait for them to go; returns how many kernels there were."""
    import psutil

    kernels = kernel_processes()
    doomed = list(kernels)
    for kernel in kernels:
        try:
            doomed.extend(kernel.children(recursive=True))
        except psutil.Error:
            pass
    for process in doomed:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(doomed, timeout=5)
    return len(kernels)


def oom_kills() -> int | None:
    """OOM kills counted in this process's memory cgroup (its kernels run in it too), from
    cgroup v2's ``memory.events`` or v1's ``memory.oom_control``; None where unreadable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(CGROUP_ROOT / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.oom_control")
    for events in candidates:
        try:
            for line in events.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


OUT_OF_MEMORY = ("MemoryError", "RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def explain(
    failure: Exception, oom_before: int | None = None, oom_after: int | None = None
) -> str:
    """Why a job failed, in words: out of memory, a kernel that died, or the cell's error."""
    text = str(failure)
    if isinstance(failure, KernelDied):
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            return (
                "out of memory: the system killed the notebook's kernel (OOM kill) while it ran; "
                "use smaller batches or images, or give the worker more memory"
            )
        return f"the notebook's kernel died while running (killed, or out of memory): {text}"
    if any(marker in text for marker in OUT_OF_MEMORY):
        return (
            f"out of memory: the retrain could not allocate what it needed ({text}); use "
            "smaller batches or images, or give the worker more memory"
        )
    return text


def main(argv: list[str]) -> int:
    """``python -m imgclf.loop.kernels WRITE_FD PARENT_PID``: the job's process (``_child``);
    the pickled ``(job, settings, kind, log level)`` on standard input."""
    import pickle
    import sys

    answer = os.fdopen(int(argv[0]), "wb")
    try:
        job, settings, kind, level = pickle.loads(sys.stdin.buffer.read())
        _child(job, settings, kind, answer, int(argv[1]), level)
    except BaseException as failure:  # before it could answer: the job's error says why
        if not answer.closed:
            with answer:
                said = f"the job's process failed: {type(failure).__name__}: {failure}"
                answer.write(pickle.dumps(("error", said)))
        raise
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
