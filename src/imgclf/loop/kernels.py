"""The retrain notebook's kernel: started (with retries), stopped, and why it died.

A job's notebook runs in a Jupyter kernel, a child of the worker (``run_notebook``). Cancelling
or finishing a job kills every kernel of the worker and their children (``stop_kernels``). A
kernel that dies on its own is explained (``explain``): out of memory when the worker's memory
cgroup counted an OOM kill while it ran (``oom_kills``), or when a cell raised ``MemoryError``
or XLA's ``RESOURCE_EXHAUSTED``; otherwise the cell's error.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from imgclf import config, pipeline
from imgclf.config import Settings
from imgclf.loop import registering

#: Where the cgroup file systems are mounted (OOM kills are counted there).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Tries at starting the notebook's kernel (jupyter_client can lose a port race).
KERNEL_START_TRIES = 3

log = logging.getLogger(__name__)


def run_notebook(
    job: dict, settings: Settings, cancelled: threading.Event, kind: str = "retrain"
) -> registering.RegisteredRun:
    """Run the job's registering notebook; retries only a kernel that failed to start (and
    was not stopped by a cancel request)."""
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
            if cancelled.is_set():
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
    from nbclient.exceptions import DeadKernelError

    text = str(failure)
    if isinstance(failure, DeadKernelError):
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
