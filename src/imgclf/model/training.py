"""The steps the train and retrain notebooks run, as tested functions.

The notebooks show and explain; these functions do: load a data set, hold out validation data,
train, evaluate and register the result with everything needed to reproduce it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from imgclf import runs
from imgclf.data import cache, folders
from imgclf.model import evaluation, network, registry, taps

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Decoded train and test splits (uint8, memory-mapped from the cache), their fingerprint
    and what could not be read."""

    train: cache.CachedSplit
    test: cache.CachedSplit
    fingerprint: str
    class_names: list[str]
    uploads: int = 0
    uploaded_tests: int = 0

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.train.skipped + self.test.skipped

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train.images.shape[1:])


def load_dataset(
    data_dir: Path,
    image_size: int,
    color_mode: str,
    include_uploads: bool = False,
    base_classes: list[str] | None = None,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> Dataset:
    """Discover and validate ``train/`` and ``test/`` (plus uploads, if asked) and read them
    decoded from the cache (``imgclf.data.cache``), decoding what is not cached yet.

    Args:
        base_classes: class order to keep (a current model's classes, when retraining); classes
            found only in the data are appended after them.
        cache_dir: where decoded images are cached (default ``<data_dir>/.cache``; a temporary
            folder when that cannot be written).
        workers: decoding processes (default: all cores).

    Raises:
        folders.DataError: missing split, too few classes, empty class folder, non-image file,
            a test class unknown to training, or a split with no readable image.
        cache.CacheError: not enough disk space for the cache.
    """
    cache_dir = _writable_cache(cache_dir or data_dir / ".cache")
    train_split = folders.discover(data_dir / "train")
    if base_classes:  # keep the current model's label indices; new classes go after them
        empty = folders.Split(train_split.root, list(base_classes), [], [])
        train_split = folders.merge_splits(empty, train_split)
    uploads = folders.discover_uploads(data_dir / "uploads") if include_uploads else None
    train_split = folders.merge_splits(train_split, uploads)
    test_split = test_set(data_dir, train_split.class_names)
    uploads_dir = data_dir / "uploads"
    uploaded_tests = sum(1 for path in test_split.paths if uploads_dir in path.parents)
    return Dataset(
        train=cache.load(train_split, image_size, color_mode, cache_dir, workers),
        test=cache.load(test_split, image_size, color_mode, cache_dir, workers),
        fingerprint=folders.dataset_fingerprint(train_split, test_split),
        class_names=train_split.class_names,
        uploads=len(uploads.paths) if uploads else 0,
        uploaded_tests=uploaded_tests,
    )


def test_set(data_dir: Path, class_names: list[str]) -> folders.Split:
    """The test set every evaluation uses: ``test/`` plus the test share of all uploads.

    Only images of ``class_names`` (the model's classes) are kept from the uploads; a class
    folder in ``test/`` that is not among them is an error (``folders.discover``).
    """
    split = folders.discover(data_dir / "test", class_names=class_names)
    uploaded = folders.discover_uploads(data_dir / "uploads", "test", classes=class_names)
    return folders.merge_splits(split, uploaded)


def test_fingerprint(dataset: Dataset) -> str:
    """What identifies the test set two models were compared on: its files' content, their
    labels, the class names and the input format (the decoded cache's key), as SHA-256."""
    digest = hashlib.sha256(dataset.test.key.encode())
    digest.update(np.asarray(dataset.test.labels, dtype=np.int64).tobytes())
    digest.update("\0".join(dataset.class_names).encode())
    return digest.hexdigest()


def _writable_cache(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder)
        probe.close()
        return folder
    except OSError:
        fallback = Path(tempfile.gettempdir()) / "imgclf-cache"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split off a stratified validation set (plain random split if a class is too small).

    Returns:
        ``(train_indices, validation_indices)`` into ``labels``: indices, not copies.
    """
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    indices = np.arange(len(labels))
    train, validation = train_test_split(
        indices, test_size=fraction, stratify=stratify, random_state=seed
    )
    return train, validation


def oversample_rare(
    labels: np.ndarray, indices: np.ndarray, floor: float, seed: int
) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """Repeat the images of rare classes among ``indices`` so that every class has at least
    ``floor`` times the median class's count.

    A class uploaded with a handful of images next to hundreds of others is otherwise never
    learned by a short fine-tuning (measured: 7 training images beside about 130 per digit, 5
    epochs: recall 0 on that class; repeated up to half the median: recall 1), and the gate
    rightly refuses the candidate. Which images are repeated is drawn with ``seed``; each
    repetition is augmented differently. Classes at or above the floor, and a ``floor`` of 0,
    leave the data as it is (a balanced data set trains exactly as without this).

    Returns:
        ``(indices, repeated)``: the indices with repetitions, and for each class that was
        repeated, ``class index -> (images, images after repetition)``.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels[indices])
    present = counts[counts > 0]
    target = int(floor * np.median(present)) if floor > 0 and len(present) else 0
    rare = [c for c in np.flatnonzero(counts) if counts[c] < target]
    if not rare:
        return indices, {}
    rng = np.random.default_rng([seed, 1])
    parts, repeated = [indices], {}
    for c in rare:
        members = indices[labels[indices] == c]
        parts.append(np.resize(rng.permutation(members), target - len(members)))
        repeated[int(c)] = (len(members), target)
    return np.concatenate(parts), repeated


#: Held-out images the temperature and the unknown threshold rest on, at least (where the
#: training images allow: at most ``MAX_VALIDATION_SHARE`` of them are held out). A tenth of
#: 180 photos is 18 images: too few to tell a temperature from 1 (a real set: p = 0.30, with
#: an ECE of 0.141 left as it was).
MIN_VALIDATION_IMAGES, MAX_VALIDATION_SHARE = 60, 0.25


def validation_share(images: int, fraction: float) -> float:
    """The share of ``images`` held out: ``fraction``, raised towards ``MIN_VALIDATION_IMAGES``
    images on small sets (never above ``MAX_VALIDATION_SHARE``, nor below ``fraction``)."""
    floor = min(MAX_VALIDATION_SHARE, MIN_VALIDATION_IMAGES / max(images, 1))
    return max(fraction, floor)


def training_indices(
    labels: np.ndarray, params: network.TrainParams, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """The images that train (rare classes repeated) and those that validate (never repeated).

    Returns:
        ``(train, validation, repeated)``, see ``hold_out`` and ``oversample_rare``.
    """
    fraction = validation_share(len(labels), params.validation_fraction)
    train, validation = hold_out(labels, fraction, seed)
    train, repeated = oversample_rare(labels, train, params.balance, seed)
    return train, validation, repeated


def describe_oversampling(dataset: Dataset, params: network.TrainParams, seed: int) -> str:
    """One sentence on the classes ``fit`` repeats (or that none needed it)."""
    if params.balance <= 0:
        return "Classes are not rebalanced (balance 0): the images train as they are."
    _, _, repeated = training_indices(dataset.train.labels, params, seed)
    if not repeated:
        return (
            f"No class has fewer than {params.balance:g} times the median class's training "
            "images: the images train as they are."
        )
    listed = ", ".join(
        f"'{dataset.class_names[c]}' ({have} images, {target} an epoch)"
        for c, (have, target) in repeated.items()
    )
    return (
        f"Rare classes are repeated (with different augmentation) up to {params.balance:g} "
        f"times the median class: {listed}."
    )


class ProgressReporter(keras.callbacks.Callback):
    """Writes the epoch reached into a run's summary (``imgclf.runs``) after every epoch."""

    def __init__(self, run_dir: str | Path, epochs: int):
        super().__init__()
        self.run_dir, self.epochs = run_dir, epochs

    def on_epoch_end(self, epoch, logs=None):
        figures = {k: round(float(v), 5) for k, v in (logs or {}).items() if k.startswith("val_")}
        runs.write_summary(self.run_dir, epoch=epoch + 1, epochs=self.epochs, **figures)


def fit(
    model,
    dataset: Dataset,
    params: network.TrainParams,
    augment,
    seed: int,
    verbose: int | str = 2,
    run_dir: str | Path | None = None,
) -> dict[str, list[float]]:
    """Hold out validation data, train with checkpointing, and return the history.

    Batches are read from the cache (``dataset.train``); ``augment`` (an
    ``augment.Augmentation``, or None) runs on each training batch on the device; under a
    data-parallel distribution (``model.distribute``) batches are split over the devices. Rare
    classes are repeated up to ``params.balance`` of the median class (``oversample_rare``). With
    ``run_dir`` (a pipeline run), each finished epoch is recorded in the run's summary
    (``epoch``, ``epochs``, ``val_loss``), which is how the API reports a job's progress.
    """
    train_part, validation, _ = training_indices(dataset.train.labels, params, seed)
    if network.has_backbone(model):
        return _fit_pretrained(
            model, dataset, params, augment, seed, verbose, run_dir, train_part, validation
        )
    return _train(model, dataset, train_part, validation, params, augment, seed, verbose, run_dir)


def _train(
    model, dataset, train_part, validation, params, augment, seed, verbose, run_dir, **more
):
    """``network.train`` on the training images' ``train_part``, the best epoch kept by a
    checkpoint in a temporary folder, progress into ``run_dir``'s summary."""
    reporter = [ProgressReporter(run_dir, params.epochs)] if run_dir else None
    with tempfile.TemporaryDirectory() as folder:
        return network.train(
            model,
            dataset.train.images,
            dataset.train.labels,
            train_part,
            validation,
            params,
            augment=augment,
            checkpoint_path=Path(folder) / "best.keras",
            seed=seed,
            verbose=verbose,
            callbacks=reporter,
            **more,
        )


def _fit_head(model, dataset, params, seed, train_part, validation) -> dict[str, list[float]]:
    """Phase 1: the head as a logistic regression on the frozen backbone's features of
    ``train_part``; its one history row, with the loss on the ``validation`` images."""
    network.freeze_backbone(model, 0)
    labels = np.asarray(dataset.train.labels)
    fitted_on = np.unique(train_part)
    features = network.backbone_features(model, dataset.train.images[fitted_on])
    head = taps.fit_linear_head(model, features, labels[fitted_on], params.balance > 0, seed)
    held = network.backbone_features(model, dataset.train.images[validation])
    chance = network.predict_proba(network.head_model(model), held)
    right = chance[np.arange(len(validation)), labels[validation]]
    return {
        "loss": [head["train_loss"]],
        "accuracy": [head["train_accuracy"]],
        "val_loss": [float(-np.log(np.clip(right, 1e-12, 1.0)).mean())],
        "val_accuracy": [float((chance.argmax(1) == labels[validation]).mean())],
        "phase": [1.0],
    }


def _fit_pretrained(
    model, dataset, params, augment, seed, verbose, run_dir, train_part, validation
) -> dict[str, list[float]]:
    """The recipe for a pretrained backbone: the head fitted as a logistic regression on the
    frozen backbone's standardised features (computed once; ``taps.fit_linear_head``), then
    the backbone's last ``params.fine_tune_blocks`` blocks trained with it, augmented, at the
    lower ``params.fine_tune_learning_rate``, BatchNorm kept in inference mode throughout.
    The validation images are kept out of both, so that their loss can say whether
    fine-tuning helped (and calibration and the unknown threshold have images no part of the
    model has seen). The history's ``phase`` says which epochs were which (1 head, one row; 2
    fine-tuning)."""
    history = _fit_head(model, dataset, params, seed, train_part, validation)
    if params.fine_tune_blocks > 0 and params.fine_tune_epochs > 0:
        before = model.get_weights()
        network.freeze_backbone(model, params.fine_tune_blocks)
        network.compile_model(model, params.fine_tune_learning_rate)
        second = replace(
            params, epochs=params.fine_tune_epochs, patience=max(2, params.patience // 3)
        )
        more = _train(
            model,
            dataset,
            train_part,
            validation,
            second,
            augment,
            seed,
            verbose,
            run_dir,
            warmup_steps=0,
        )
        kept = min(more["val_loss"]) <= min(history["val_loss"])
        log.info(
            "fine-tuning the last %d block(s): validation loss %.4f -> %.4f (%s)",
            params.fine_tune_blocks,
            min(history["val_loss"]),
            min(more["val_loss"]),
            "kept" if kept else "dropped: the head-only model is kept",
        )
        if not kept:
            model.set_weights(before)
        more["phase"] = [2.0] * len(more["loss"])
        for key in history:
            history[key] = history[key] + more.get(key, [float("nan")] * len(more["loss"]))
    network.freeze_backbone(model, 0)
    return history


def evaluate(model, split, predict=None) -> tuple[dict, np.ndarray]:
    """Return ``(metrics, probabilities)`` of a model on a decoded split (``cache.CachedSplit``),
    read batch by batch (by ``predict(images) -> probabilities`` where given, e.g. a
    ``Predictor.uncalibrated`` computed by OpenVINO; else by Keras).

    A model that knows fewer classes than the split (the current model, when uploads brought
    new classes) gets zero probability for the classes it has never seen, so that it is scored
    on the same test set as a candidate that knows them all; their names are listed in the
    metrics as ``unseen_classes`` (the gate asks more of a candidate on them).
    """
    if predict is not None:
        probabilities = np.asarray(predict(split.images), np.float32)
    else:
        probabilities = network.predict_proba(model, split.images)
    missing = len(split.class_names) - probabilities.shape[1]
    if missing > 0:
        probabilities = np.pad(probabilities, ((0, 0), (0, missing)))
    metrics = evaluation.classification_metrics(split.labels, probabilities, split.class_names)
    if missing > 0:
        metrics["unseen_classes"] = list(split.class_names[-missing:])
    return metrics, probabilities


@dataclass
class TrainingRecord:
    """How a model was trained, as its registry version records it."""

    parameters: dict
    history: dict[str, list[float]]
    color_mode: str
    report: str | None = None
    parent_version: str | None = None
    distribution: dict | None = None
    #: The fitted temperature and unknown detector (``imgclf.model.posthoc``), if any.
    trust: object | None = None


def register(
    models_dir: Path,
    model,
    dataset: Dataset,
    test_metrics: dict,
    record: TrainingRecord,
    extra: dict | None = None,
    attachments: dict[str, bytes] | None = None,
    version: str | None = None,
) -> str:
    """Save a trained model into the registry with its metadata and ``attachments`` (beside
    the trust's), as ``version`` (reserved in the database) or the next number; returns the
    version name."""
    info = {
        "parent_version": record.parent_version,
        "parameters": record.parameters,
        "data_fingerprint": dataset.fingerprint,
        "class_names": dataset.class_names,
        "image_size": list(dataset.input_shape[:2]),
        "color_mode": record.color_mode,
        "test_metrics": test_metrics,
        "history": record.history,
        "train_size": int(len(dataset.train.labels)),
        "uploads_used": dataset.uploads,
        "skipped_files": [{"path": p, "reason": r} for p, r in dataset.skipped],
        "report": record.report,
        "distribution": record.distribution or {"distribution": "none", "count": 1},
        **(record.trust.metadata() if record.trust else {}),
        **(extra or {}),
    }
    attachments = {**(record.trust.attachments() if record.trust else {}), **(attachments or {})}
    with tempfile.TemporaryDirectory() as folder:
        path = network.save_model(model, Path(folder) / registry.MODEL_FILE)
        return registry.register(models_dir, path, info, version, attachments)


def params_dict(params: network.TrainParams, **more) -> dict:
    """Return training parameters and any extra ones as one JSON-ready dict."""
    return {**asdict(params), **more}
