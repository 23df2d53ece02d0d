"""Inference runtimes: the same registered ``.keras`` model computed by JAX (XLA) or OpenVINO.

``INFERENCE_RUNTIME`` (``imgclf.config.get_runtime_settings``) chooses: ``jax``, ``openvino``
or ``auto`` (OpenVINO where it is installed and JAX computes on the CPU, else JAX).

OpenVINO runs an IR converted from the registered model file by Keras' own OpenVINO export.
Keras picks its backend once per process and this one computes with JAX, so the conversion runs
in a child process (``imgclf.model.ovexport``, with the ``openvino`` backend and without this
process's secrets). The IR has two outputs, the pooled features and the probabilities
(``trust.with_features``), and is kept under ``<MODELS_DIR>/.openvino/<version>-<digest>/``,
keyed by the model file's SHA-256 and OpenVINO's version: converted under a file lock (once per
version whatever the number of workers: the others wait, then find it), written to a temporary
folder and renamed (never half there; what a killed conversion left is removed by the next),
and never stale. A registered version's own folder stays as it was written.

What cannot run (OpenVINO missing, a layer its Keras backend cannot convert, a compile error,
answers that differ from JAX's) raises ``RuntimeUnavailable`` saying why, naming the layer
where there is one; ``Predictor`` then serves with JAX and logs the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from filelock import FileLock

from imgclf import config
from imgclf.model import registry

#: Where converted models are kept, inside the registry folder.
CACHE_FOLDER = ".openvino"
#: The largest difference allowed between the runtimes' probabilities (and, relative to the
#: features' scale, their features) on the probe images checked at every load.
TOLERANCE = 1e-4
#: How long a conversion may take before it is given up.
EXPORT_TIMEOUT_S = 600


#: ``BATCH_MAX_SIZE=auto``'s batch for OpenVINO and for JAX on an accelerator.
AUTO_BATCH_MAX_SIZE = 8


def batch_limit(setting: int | None, served_by: str, threads: int = 1) -> int:
    """The most images one coalesced call holds for a model ``served_by`` a runtime with
    ``threads`` inference threads: ``BATCH_MAX_SIZE``, or when it is ``auto`` (None),
    ``AUTO_BATCH_MAX_SIZE`` where a batch is cheaper than its images one by one, else 1 (off).

    ``make bench`` measured when that is (EfficientNet-Lite0 at 224 px, 2 cores): XLA on a CPU
    computes a batch no faster per image and in one call instead of side by side (coalescing
    cut JAX's throughput by a fifth); OpenVINO with one thread a worker computed 127 images a
    second one by one and 88 in batches of 8 (coalescing: x0.99 over HTTP), with two threads a
    worker coalescing gave x1.18. On an accelerator batches are what it is made for.
    """
    if setting is not None:
        return setting
    if served_by == "openvino":
        return AUTO_BATCH_MAX_SIZE if threads >= 2 else 1
    import jax

    return AUTO_BATCH_MAX_SIZE if jax.default_backend() != "cpu" else 1


class RuntimeUnavailable(RuntimeError):
    """This runtime cannot run this model here; the message says why."""


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used in this environment, or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"OpenVINO is not installed ({error}): pip install openvino"
    return None


def choose(requested: str) -> tuple[str, str | None]:
    """``(runtime, note)``: the runtime to try for ``requested`` (``config.RUNTIMES``), and why
    it is not the one asked for (None when it is)."""
    if requested == "jax":
        return "jax", None
    missing = openvino_missing()
    if missing:
        return "jax", missing
    import jax

    if requested == "auto" and jax.default_backend() != "cpu":
        return "jax", f"JAX computes on the {jax.default_backend().upper()}: auto keeps it"
    return "openvino", None


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def _custom_object_modules() -> list[str]:
    """The modules that registered custom Keras objects here (the child imports them too)."""
    import keras

    objects = keras.saving.get_custom_objects().values()
    return sorted({thing.__module__ for thing in objects if hasattr(thing, "__module__")})


def export(models_dir: Path, version: str) -> Path:
    """The OpenVINO IR (``model.xml``) of a registered version, converted now unless it was
    before.

    Raises:
        RuntimeUnavailable: OpenVINO is missing, or cannot convert the model (the message
            names the layer).
    """
    missing = openvino_missing()
    if missing:
        raise RuntimeUnavailable(missing)
    import openvino

    model_file = registry.model_path(Path(models_dir), version)
    tag = openvino.__version__.split("-")[0]
    folder = Path(models_dir) / CACHE_FOLDER / f"{version}-{_digest(model_file)}-ov{tag}"
    xml = folder / "model.xml"
    if xml.is_file() and (folder / "model.bin").is_file():
        return xml
    folder.parent.mkdir(parents=True, exist_ok=True)
    # one conversion at a time: the other workers wait for it and then find it done
    with FileLock(str(folder.parent / ".lock"), timeout=EXPORT_TIMEOUT_S + 60):
        if xml.is_file() and (folder / "model.bin").is_file():
            return xml
        for left in folder.parent.glob(".v*-*"):  # a killed worker's (none runs: we hold it)
            shutil.rmtree(left, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            _convert(model_file, staging / "model.xml", version)
            staging.chmod(0o755)  # as readable as the registry (mkdtemp made it owner-only)
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return xml


def _convert(model_file: Path, xml: Path, version: str) -> None:
    command = [sys.executable, "-m", "imgclf.model.ovexport", str(model_file), str(xml)]
    try:
        done = subprocess.run(
            command + _custom_object_modules(),
            env=config.openvino_export_environment(sys.path),
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeUnavailable(
            f"converting {version} for OpenVINO took over {EXPORT_TIMEOUT_S} s"
        ) from None
    if done.returncode == 0 and xml.is_file():
        return
    lines = done.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        found = {"layer": None, "error": f"exit status {done.returncode}: {tail[0]}"}
    where = f" at layer {found['layer']}" if found.get("layer") else ""
    raise RuntimeUnavailable(f"OpenVINO cannot run {version}{where}: {found['error']}")


class OpenVinoForward:
    """A compiled OpenVINO model: ``forward(images) -> (features, probabilities)``, any batch
    size (the IR's batch dimension is dynamic: no padding), callable from several threads (each
    gets an inference request of its own)."""

    def __init__(self, xml: Path, threads: int):
        import openvino

        properties = {
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # several workers share the cores: pinned threads would pile onto the same ones
            "ENABLE_CPU_PINNING": False,
            # f32 everywhere: a CPU with bf16 units would otherwise get bf16 and other answers
            "INFERENCE_PRECISION_HINT": "f32",
        }
        try:
            self._compiled = openvino.Core().compile_model(str(xml), "CPU", properties)
        except RuntimeError as error:
            raise RuntimeUnavailable(f"OpenVINO cannot compile {xml}: {error}") from None
        self.threads = int(threads)
        self._local = threading.local()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        features = request.get_output_tensor(0).data.copy()
        probabilities = request.get_output_tensor(1).data.copy()
        return features, probabilities


def probe_images(shape: tuple[int, int, int], count: int = 4, seed: int = 0) -> np.ndarray:
    """Images the runtimes are compared on at load: smooth random patterns in [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (count, max(1, shape[0] // 4), max(1, shape[1] // 4), shape[2]))
    images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, : shape[0], : shape[1]]
    padded = np.zeros((count, *shape), np.float32)
    padded[:, : images.shape[1], : images.shape[2]] = images
    return padded


def differences(reference, other) -> dict[str, float]:
    """The largest differences between two ``(features, probabilities)`` pairs: absolute for
    the probabilities, relative to the features' largest magnitude for the features."""
    features, probabilities = (np.asarray(part, np.float64) for part in reference)
    scale = max(1.0, float(np.abs(features).max()))
    return {
        "probabilities": float(np.abs(probabilities - np.asarray(other[1])).max()),
        "features": float(np.abs(features - np.asarray(other[0])).max() / scale),
    }


def check_equal(reference, other, version: str) -> dict[str, float]:
    """``differences`` when both are within ``TOLERANCE``.

    Raises:
        RuntimeUnavailable: they are not (the message gives both differences).
    """
    found = differences(reference, other)
    if max(found.values()) > TOLERANCE:
        raise RuntimeUnavailable(
            f"OpenVINO's answers for {version} differ from JAX's by {found['probabilities']:.2g} "
            f"(probabilities) and {found['features']:.2g} (features, relative): over {TOLERANCE}"
        )
    return found
