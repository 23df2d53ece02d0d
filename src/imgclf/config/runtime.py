"""How predictions are computed: the inference runtime, its threads, micro-batching."""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgclf.config.readers import SECRET_NAMES, ConfigError, _float, _int, _read_all

#: ``INFERENCE_RUNTIME``'s values: JAX (XLA), OpenVINO (CPU only), or OpenVINO where it can
#: run (installed, and JAX computes on the CPU), else JAX.
RUNTIMES = ("jax", "openvino", "auto")


@dataclass(frozen=True)
class RuntimeSettings:
    """How a process computes predictions (``imgclf.model.runtime``) and how an API worker
    coalesces concurrent requests (``serve.batching``)."""

    runtime: str = "auto"
    threads: int = 1
    #: None: chosen per runtime (``imgclf.model.runtime.batch_limit``); 1: off
    batch_max_size: int | None = None
    batch_max_wait_ms: float = 2.0

    @property
    def batching(self) -> bool:
        return self.batch_max_size is None or self.batch_max_size > 1


def get_runtime_settings() -> RuntimeSettings:
    """Return ``INFERENCE_RUNTIME`` (auto; ``RUNTIMES``), ``INFERENCE_THREADS`` (the threads
    one OpenVINO inference may use; default every core: a worker's threads sleep while it
    computes nothing, and ``make bench`` measured 2 workers x 2 threads faster on 2 cores than
    2 x 1, 73 against 47 requests a second one at a time), ``BATCH_MAX_SIZE`` (the most images in a
    coalesced inference call; ``auto``, the default: 8 where a batch is cheaper than its
    images one by one, ``imgclf.model.runtime.batch_limit``; 1 switches micro-batching off)
    and ``BATCH_MAX_WAIT_MS`` (2: the longest the first request of a batch waits for others,
    and only while others are being decoded).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    runtime = (os.environ.get("INFERENCE_RUNTIME") or "auto").strip().lower()
    if runtime not in RUNTIMES:
        raise ConfigError(f"INFERENCE_RUNTIME={runtime!r}: expected one of {', '.join(RUNTIMES)}")
    cores = os.cpu_count() or 1
    automatic = (os.environ.get("BATCH_MAX_SIZE") or "auto").strip().lower() == "auto"
    spec = {
        "INFERENCE_THREADS": (_int, cores, 1, 1024),
        "BATCH_MAX_WAIT_MS": (_float, RuntimeSettings.batch_max_wait_ms, 0.0, 1000.0),
    }
    if not automatic:
        spec["BATCH_MAX_SIZE"] = (_int, 1, 1, 1024)
    values = _read_all(spec)
    return RuntimeSettings(
        runtime=runtime,
        threads=values["INFERENCE_THREADS"],
        batch_max_size=None if automatic else values["BATCH_MAX_SIZE"],
        batch_max_wait_ms=values["BATCH_MAX_WAIT_MS"],
    )


def openvino_export_environment(python_path: list[str]) -> dict[str, str]:
    """The environment of the child that converts a model for OpenVINO (``imgclf.model.
    runtime``): this one without its secrets (the child reads one model file), with Keras's
    OpenVINO backend and this process's import path."""
    environment = {
        name: value for name, value in os.environ.items() if not SECRET_NAMES.search(name)
    }
    environment["KERAS_BACKEND"] = "openvino"
    environment["PYTHONPATH"] = os.pathsep.join(path for path in python_path if path)
    return environment
