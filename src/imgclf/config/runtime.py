"""How predictions are computed: the inference runtime, its threads, micro-batching."""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgclf.config.catalogue import BY_NAME, value
from imgclf.config.readers import SECRET_NAMES, ConfigError

#: ``INFERENCE_RUNTIME``'s values: JAX (XLA), OpenVINO (CPU only), or OpenVINO where it can
#: run (installed, and JAX computes on the CPU), else JAX.
RUNTIMES = BY_NAME["INFERENCE_RUNTIME"].choices


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
    """Return how predictions are computed (``variables.toml``: the ``runtime`` group).
    ``INFERENCE_THREADS`` defaults to every core: a worker's threads sleep while it computes
    nothing, and ``make bench`` measured 2 workers x 2 threads faster on 2 cores than 2 x 1.

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    batch = (value("BATCH_MAX_SIZE") or "auto").strip().lower()
    if batch != "auto" and not (batch.isdigit() and 1 <= int(batch) <= 1024):
        raise ConfigError(f"BATCH_MAX_SIZE={batch}: expected auto or 1 to 1024")
    return RuntimeSettings(
        runtime=value("INFERENCE_RUNTIME"),
        threads=value("INFERENCE_THREADS"),
        batch_max_size=None if batch == "auto" else int(batch),
        batch_max_wait_ms=value("BATCH_MAX_WAIT_MS"),
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
