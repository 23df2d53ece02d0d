"""Serving-side prediction: one loaded registry version behind a jit-compiled forward pass."""

from __future__ import annotations

import atexit
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgclf import config
from imgclf.config import MAX_IMAGE_PIXELS
from imgclf.data import imagestats
from imgclf.data.preprocessing import ImageDecodeError, decode
from imgclf.model import calibration, novelty, registry, runtime

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One image's result: the label, its probability and every class's probability
    (calibrated: ``imgclf.model.calibration``), and whether the image is unlike every class
    the model knows (``unknown``, with its ``unknown_score``: 1.0 at the threshold; None for
    a model registered without a detector)."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    unknown: bool | None = None
    unknown_score: float | None = None
    #: With ``explain``: a base64 PNG heat map at the model's input size (``saliency``).
    saliency: str | None = None


@dataclass
class Classified:
    """What ``Predictor.classify`` found for one payload: a prediction, or why there is none.

    ``facts`` describes the input for the prediction log: ``width``, ``height``, ``format``
    (from the header), ``brightness`` and ``contrast`` (of the model's input); empty on error.
    """

    prediction: Prediction | None = None
    error: str | None = None
    facts: dict = field(default_factory=dict)


#: One jitted forward pass per model architecture (its Keras config), shared by every version
#: with that architecture: weights are arguments, so a new version of the same network reuses
#: the compiled code and a hot reload costs a file load, not a compilation.
_FORWARDS: dict[str, object] = {}
_FORWARDS_LOCK = threading.Lock()


def _compiled_forward(model):
    """``forward(trainable, non_trainable, images) -> outputs`` of ``model``, jitted once per
    architecture."""
    import jax

    key = json.dumps(model.get_config(), sort_keys=True, default=str)
    with _FORWARDS_LOCK:
        if key not in _FORWARDS:

            def forward(trainable, non_trainable, images):
                outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
                return outputs

            _FORWARDS[key] = jax.jit(forward)
        return _FORWARDS[key]


@dataclass
class Predictor:
    """A loaded model version with a jitted, inference-mode forward pass.

    Build one with ``Predictor.load``. Thread safety: after construction a predictor is never
    changed (weights are immutable JAX arrays, metadata is only read), the jitted function is
    safe to call from several threads, and decoding uses no shared state; so ``classify`` and
    ``predict_images`` may be called from any number of threads at once, as gunicorn's gthread
    workers do (``tests/test_prediction.py`` checks it). A hot reload builds a new predictor
    rather than changing this one.

    ``requested_runtime`` (``config.RUNTIMES``) says what computes the answers; ``runtime`` is
    the one that does (``jax`` or ``openvino``) and ``runtime_note`` why it is not the one
    asked for. OpenVINO needs a registered version (``models_dir``) and is used only when its
    answers on probe images equal JAX's within ``runtime.TOLERANCE``; else JAX serves and the
    reason is logged. Heat maps (``saliency``) are always JAX's: they need gradients.
    """

    version: str
    metadata: dict
    model: object
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    models_dir: Path | None = None
    requested_runtime: str = "jax"
    threads: int = 1

    def __post_init__(self) -> None:
        import jax.numpy as jnp

        from imgclf.model.posthoc import with_features

        model = with_features(self.model)  # features for the unknown answer, in one pass
        self._with_features = model
        self._forward = _compiled_forward(model)
        self.temperature = float(self.metadata.get("calibration", {}).get("temperature", 1.0))
        attached = None
        if self.models_dir is not None:
            attached = registry.attachment(Path(self.models_dir), self.version, novelty.FILE)
        self.novelty = novelty.Novelty.from_bytes(attached) if attached else None
        # copies: a later model.predict() on the same model may donate the variables' buffers
        self._trainable = [jnp.array(v.value, copy=True) for v in model.trainable_variables]
        self._non_trainable = [
            jnp.array(v.value, copy=True) for v in model.non_trainable_variables
        ]
        self._openvino: runtime.OpenVinoForward | None = None
        self.runtime_differences: dict | None = None  # OpenVINO's from JAX's, at load
        self.runtime, self.runtime_note = runtime.choose(self.requested_runtime)
        if self.runtime == "openvino":
            self._start_openvino()
        elif self.runtime_note and self.requested_runtime == "openvino":
            log.warning(
                "INFERENCE_RUNTIME=openvino: %s serves with JAX: %s",
                self.version,
                self.runtime_note,
            )

    def _start_openvino(self) -> None:
        """Serve with OpenVINO when it runs this version and answers as JAX does; else JAX,
        with the reason logged and kept in ``runtime_note``."""
        try:
            if self.models_dir is None:
                raise runtime.RuntimeUnavailable("the model is not a registered version")
            forward = runtime.OpenVinoForward(
                runtime.export(Path(self.models_dir), self.version), self.threads
            )
            channels = 1 if self.color_mode == "grayscale" else 3
            probe = runtime.probe_images((*self.image_size, channels))
            self.runtime_differences = runtime.check_equal(
                self._jax_outputs(probe), forward(probe), self.version
            )
            self._openvino = forward
        except Exception as error:  # whatever it is, JAX serves and the log says why
            self.runtime, self.runtime_note = "jax", str(error) or type(error).__name__
            log.warning("%s serves with JAX, not OpenVINO: %s", self.version, error)

    @classmethod
    def load(
        cls, models_dir: Path, version: str | None = None, runtime: str | None = None
    ) -> Predictor:
        """Load a version (default: the current one), computed by ``runtime`` (default:
        ``INFERENCE_RUNTIME``, with ``INFERENCE_THREADS``).

        Raises:
            registry.RegistryError: no such version, or no current model.
        """
        from imgclf.model.network import load_model

        version = version or registry.current_version(models_dir)
        if version is None:
            raise registry.RegistryError(f"no current model in {models_dir}; run `make train`")
        metadata = registry.metadata(models_dir, version)
        model = load_model(registry.model_path(models_dir, version))
        settings = config.get_runtime_settings()
        return cls(
            version,
            metadata,
            model,
            models_dir=models_dir,
            requested_runtime=runtime or settings.runtime,
            threads=settings.threads,
        )

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.metadata["image_size"])

    @property
    def color_mode(self) -> str:
        return self.metadata["color_mode"]

    def answers(
        self, images: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(probabilities, unknown, scores)`` for preprocessed images ``(n, h, w, c)``: the
        calibrated probabilities, and per image whether it is unknown and its score (None
        without a detector).

        Computed by ``runtime``; for JAX, batches are padded to a power of two so that only a
        few shapes are ever compiled.
        """
        return self.answers_from(*self._outputs(images))

    def answers_from(self, features: np.ndarray, outputs: np.ndarray) -> tuple:
        """``answers`` of images whose ``outputs`` (``(features, uncalibrated)``) are known."""
        probabilities = calibration.scale(outputs, self.temperature)
        if self.novelty is None:
            return probabilities, None, None
        unknown, scores = self.novelty.unknown(features)
        return probabilities, unknown, scores

    def _outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features, probabilities)`` by ``runtime`` (uncalibrated)."""
        if self._openvino is not None:
            return self._openvino(images)
        return self._jax_outputs(images)

    def _jax_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features, probabilities)`` by the jitted JAX forward pass (uncalibrated)."""
        count = len(images)
        padded = 1 << max(0, (count - 1).bit_length())
        if padded != count:
            filler = np.zeros((padded - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, filler])
        features, outputs = self._forward(self._trainable, self._non_trainable, images)
        # wait without the GIL: other request threads decode and answer meanwhile
        outputs.block_until_ready()
        return np.asarray(features)[:count], np.asarray(outputs)[:count]

    def outputs(self, images, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``(features, uncalibrated probabilities)`` of images (uint8 or floats in [0, 1]; a
        memory map is read batch by batch) in one pass, computed by ``runtime``: everything a
        batch evaluation needs (the gate scores a model once: ``loop.promotion``)."""
        from imgclf.model.batches import as_inputs

        parts = [
            self._outputs(as_inputs(np.asarray(images[start : start + batch_size])))
            for start in range(0, len(images), batch_size)
        ]
        if not parts:
            return np.zeros((0, 0), np.float32), np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def uncalibrated(self, images, batch_size: int = 64) -> np.ndarray:
        """The model's own probabilities (no temperature) of images (``outputs``)."""
        return self.outputs(images, batch_size)[1]

    def features(self, images, batch_size: int = 64) -> np.ndarray:
        """The pooled features (the unknown answer's; a backbone's) of images (``outputs``)."""
        return self.outputs(images, batch_size)[0]

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Return the calibrated probabilities for preprocessed images ``(n, h, w, c)``."""
        return self.answers(images)[0]

    def warm_up(self, max_batch: int = 1, largest: int = 1, explain_max: int = 0) -> None:
        """Compile now every shape a request can need, not on the request: the forward pass
        for one image and, for JAX, every size it pads to up to ``largest`` (the biggest
        request) or ``max_batch`` (micro-batching's largest call); with ``explain_max``, the
        heat maps' gradient for every size they pad to up to it."""
        channels = 1 if self.color_mode == "grayscale" else 3
        shape = (*self.image_size, channels)
        limit = max(max_batch, largest if self.runtime == "jax" else 1)
        for size in _padded_sizes(limit) | ({max_batch} if max_batch > 1 else set()):
            self.predict_images(np.zeros((size, *shape), np.float32))
        for size in _padded_sizes(explain_max) if explain_max else ():
            self.saliency(np.zeros((size, *shape), np.float32), np.zeros(size, np.int32))

    def saliency(self, images: np.ndarray, classes) -> np.ndarray:
        """Heat maps ``(n, h, w)`` in [0, 1] of why ``images`` got ``classes`` (one backward
        pass; ``imgclf.model.saliency``)."""
        from imgclf.model import saliency

        count = len(images)  # padded as the forward pass is: a few shapes, compiled at load
        padded = 1 << max(0, (count - 1).bit_length())
        classes = np.asarray(classes, np.int32)
        if padded != count:
            images = np.concatenate(
                [images, np.zeros((padded - count, *images.shape[1:]), np.float32)]
            )
            classes = np.concatenate([classes, np.zeros(padded - count, np.int32)])
        found = saliency.maps(
            self._with_features, self._trainable, self._non_trainable, images, classes
        )
        return found[:count]

    def classify(
        self,
        payloads: list[bytes],
        max_pixels: int = MAX_IMAGE_PIXELS,
        explain: bool = False,
        infer: Callable[[np.ndarray], tuple] | None = None,
    ) -> list[Classified]:
        """Decode and classify encoded images in one forward pass; one result per payload
        (with ``explain``, each prediction carries its heat map too). ``infer`` computes
        ``answers`` of the decoded images instead (the API's micro-batching shares the forward
        pass with concurrent requests that way).

        A payload that is not a readable image (or has more than ``max_pixels``) gets a
        ``Classified`` with ``error`` (the reason) and no prediction; the others are classified
        all the same.
        """
        results, decoded = self._decode(payloads, max_pixels)
        if not decoded:
            return results
        images = np.stack([array for _, array in decoded])
        rows, unknown, scores = (infer or self.answers)(images)
        for index, (result, _) in enumerate(decoded):
            known = None if unknown is None else (bool(unknown[index]), float(scores[index]))
            result.prediction = self.describe(rows[index], known)
        if explain:
            from imgclf.model.saliency import as_png

            heat = self.saliency(images, rows.argmax(axis=1))
            for (result, _), found in zip(decoded, heat, strict=True):
                result.prediction.saliency = as_png(found)
        return results

    def _decode(self, payloads: list[bytes], max_pixels: int) -> tuple[list, list]:
        """``(results, decoded)``: a ``Classified`` per payload (an error, or the facts), and
        ``(result, array)`` for each that decoded."""
        results, decoded = [], []
        for payload in payloads:
            try:
                image = decode(payload, self.image_size, self.color_mode, max_pixels)
            except ImageDecodeError as error:
                results.append(Classified(error=str(error).removeprefix("image: ")))
                continue
            facts = {"width": image.width, "height": image.height, "format": image.format}
            facts.update(imagestats.brightness_contrast(image.array))
            results.append(Classified(facts=facts))
            decoded.append((results[-1], image.array))
        return results, decoded

    def describe(
        self, probabilities: np.ndarray, unknown: tuple[bool, float] | None = None
    ) -> Prediction:
        """Turn one row of probabilities (and ``(unknown, score)``) into a ``Prediction``."""
        best = int(np.argmax(probabilities))
        names = self.class_names
        return Prediction(
            names[best],
            float(probabilities[best]),
            {name: float(p) for name, p in zip(names, probabilities, strict=True)},
            *(unknown or (None, None)),
        )


def _padded_sizes(limit: int) -> set[int]:
    """The batch sizes JAX pads to (powers of two) for batches of 1 to ``limit`` images."""
    return {1 << power for power in range(max(0, (limit - 1).bit_length()) + 1)}


class LiveModel:
    """The current registry version, kept up to date by a background thread.

    Every ``poll_s`` seconds the thread looks at the registry pointer (a ``stat`` call, and a
    read only when it changed). When another version became current, the thread loads it,
    compiles and warms its forward pass, and only then swaps it in: requests already running
    finish on the old predictor, new ones get the new one, none waits or fails.

    Compiled before it serves means every path (``Predictor.warm_up``): one image, every batch
    up to ``largest`` images, and heat maps of up to ``explain_max`` images. ``on_loaded`` is
    called (in the loading thread) once a version serves.
    """

    def __init__(
        self,
        models_dir: Path,
        poll_s: float = 0.5,
        batch_setting: int | None = 1,
        largest: int = 1,
        explain_max: int = 0,
        on_loaded: Callable[[Predictor], None] | None = None,
    ):
        self.models_dir = Path(models_dir)
        self.poll_s = poll_s
        #: ``BATCH_MAX_SIZE``: a version is compiled up to its batch limit before it serves
        self.batch_setting = batch_setting
        self.largest, self.explain_max, self.on_loaded = largest, explain_max, on_loaded
        self.last_error: str | None = None
        self._predictor: Predictor | None = None
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def predictor(self) -> Predictor | None:
        """The predictor to use now (loads the current version on first use)."""
        if self._predictor is None:
            self.refresh()
        return self._predictor

    def _pointer_stamp(self) -> tuple | None:
        try:
            info = (self.models_dir / registry.POINTER_FILE).stat()
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def refresh(self) -> bool:
        """Load the current version if it is not the one loaded; returns whether it swapped."""
        with self._lock:
            stamp = self._pointer_stamp()
            if stamp is not None and stamp == self._stamp:
                return False
            try:
                version = registry.current_version(self.models_dir)
                loaded = self._predictor.version if self._predictor else None
                if version is None or version == loaded:
                    self._stamp = stamp
                    return False
                predictor = Predictor.load(self.models_dir, version)
                limit = runtime.batch_limit(
                    self.batch_setting, predictor.runtime, predictor.threads
                )
                predictor.warm_up(limit, self.largest, self.explain_max)
            except Exception as error:  # keep serving the loaded version; retry next poll
                self.last_error = f"loading the current model failed: {error}"
                return False
            self._predictor, self._stamp, self.last_error = predictor, stamp, None
        if self.on_loaded is not None:
            self.on_loaded(predictor)
        return True

    def start(self) -> LiveModel:
        """Start the polling thread (once per process; call it after forking)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="model-reload", daemon=True)
            self._thread.start()
            atexit.register(self.stop, join_s=60.0)
        return self

    def stop(self, join_s: float = 0.0) -> None:
        """Stop polling; with ``join_s``, wait that long for a load in progress to end (at exit:
        an interpreter that ends while XLA compiles in this thread aborts the process)."""
        self._stop.set()
        if join_s and self._thread is not None:
            self._thread.join(join_s)

    @property
    def loaded(self) -> Predictor | None:
        """The loaded predictor, or None while the first load has not finished (no waiting)."""
        return self._predictor

    def _poll(self) -> None:
        self.refresh()  # load at once: the first request need not wait for it
        while not self._stop.wait(self.poll_s):
            self.refresh()
