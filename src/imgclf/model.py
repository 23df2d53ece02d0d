"""Build, compile, train, save, load and fine-tune the classifier (Keras 3 on JAX)."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras  # the backend is chosen by importing the package (imgclf/__init__.py)
import numpy as np
from keras import layers, regularizers

from imgclf.config import DISTRIBUTIONS  # noqa: E402

HEAD_NAME = "head"
#: Optimisation steps before early stopping may judge the validation loss.
WARMUP_STEPS = 100
FEATURES_NAME = "features"

#: Backbones from keras.applications: constructor and the scale it expects its input in.
#: Our input is always [0, 1]; a Rescaling layer maps it to the backbone's range.
BACKBONES = {
    "mobilenet_v2": ("MobileNetV2", 2.0, -1.0),
    "efficientnet_b0": ("EfficientNetB0", 255.0, 0.0),
    "resnet50": ("ResNet50", 255.0, 0.0),
}


@dataclass
class TrainParams:
    """Hyper-parameters of a training run (the notebooks' parameters map onto these)."""

    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 10
    l2: float = 1e-4
    dropout: float = 0.3
    validation_fraction: float = 0.1
    #: Classes with fewer training images than this share of the median class are repeated up
    #: to it every epoch (``training.oversample_rare``); 0 leaves the data as it is.
    balance: float = 0.5


def distribute(mode: str = "auto") -> dict:
    """Choose how training uses the devices, before the model is built.

    ``auto``: data-parallel over the accelerators (GPUs, TPUs) when there are several, else
    one device; ``data_parallel``: over every device JAX has (CPUs too, e.g. with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2``); ``none``: one device. Data-parallel
    training uses Keras' distribution API (``keras.distribution.DataParallel``): each batch is
    split over the devices and the gradients are averaged.

    Returns:
        ``{"distribution": "data_parallel" or "none", "devices": [...], "count": n}``, for the
        notebook to show and the model's metadata to record.

    Raises:
        ValueError: an unknown mode.
    """
    import jax

    if mode not in DISTRIBUTIONS:
        raise ValueError(f"DISTRIBUTION={mode!r}: expected one of {', '.join(DISTRIBUTIONS)}")
    devices = jax.devices()
    accelerators = [d for d in devices if d.platform != "cpu"]
    chosen = accelerators if mode == "auto" else devices
    parallel = mode != "none" and len(chosen) > 1
    if parallel:
        names = [f"{d.platform}:{d.id}" for d in chosen]
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=names))
    else:
        chosen = devices[:1]
    return {
        "distribution": "data_parallel" if parallel else "none",
        "devices": [f"{d.platform}:{d.id} ({d.device_kind})" for d in chosen],
        "count": len(chosen),
    }


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and Keras (JAX) so that a run can be repeated exactly."""
    keras.utils.set_random_seed(seed)


def _conv_block(x, filters: int, l2: float, name: str):
    for index in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_regularizer=regularizers.L2(l2),
            name=f"{name}_conv{index}",
        )(x)
        # momentum 0.9: small data sets give few steps, and the default 0.99 leaves the
        # inference statistics far from the training ones for many epochs.
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return layers.MaxPooling2D(name=f"{name}_pool")(x)


def _backbone(name: str, x, input_shape: tuple[int, int, int], weights: str | None):
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r}: expected one of {sorted(BACKBONES)} or None")
    constructor, scale, offset = BACKBONES[name]
    if input_shape[-1] == 1:  # pretrained backbones take three channels
        x = layers.Concatenate(name="to_rgb")([x, x, x])
    x = layers.Rescaling(scale, offset, name="backbone_scale")(x)
    try:
        base = getattr(keras.applications, constructor)(
            include_top=False, weights=weights, input_shape=(*input_shape[:2], 3)
        )
    except Exception as error:
        if weights is None:
            raise
        raise ValueError(
            f"could not load {weights!r} weights for {name} ({error}); they are downloaded "
            "on first use and need the network. Use backbone_weights=None offline."
        ) from None
    return layers.GlobalAveragePooling2D(name="backbone_pool")(base(x))


def build_model(
    num_classes: int,
    input_shape: tuple[int, int, int],
    l2: float = 1e-4,
    dropout: float = 0.3,
    backbone: str | None = None,
    backbone_weights: str | None = None,
    filters: tuple[int, ...] = (16, 32, 64),
) -> keras.Model:
    """Build the classifier: a feature extractor, dropout and a softmax head.

    The feature extractor is a small CNN (three double-convolution blocks with batch norm and
    L2 regularisation) or, with ``backbone``, a ``keras.applications`` network.

    Args:
        num_classes: size of the softmax head (at least 2).
        input_shape: ``(height, width, channels)`` of inputs scaled to [0, 1].
        backbone: None for the custom CNN, or a key of ``BACKBONES``.
        backbone_weights: None (random, offline) or ``"imagenet"`` (downloads once).
        filters: width of each block of the custom CNN (each block halves the resolution).

    Returns:
        An uncompiled functional model whose last layer is named ``"head"``.

    Raises:
        ValueError: fewer than two classes or an unknown backbone.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a classifier needs at least two classes")
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if backbone:
        x = _backbone(backbone, x, input_shape, backbone_weights)
    else:
        for index, width in enumerate(filters):
            x = _conv_block(x, width, l2, name=f"block{index + 1}")
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name=FEATURES_NAME)(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=regularizers.L2(l2), name=HEAD_NAME
    )(x)
    return keras.Model(inputs, outputs, name="imgclf")


def compile_model(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Compile with Adam and sparse categorical cross-entropy; returns the same model."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def device_multiple() -> int:
    """How many devices each batch is split over (1 unless a distribution is set)."""
    current = keras.distribution.distribution()
    return int(current.device_mesh.devices.size) if current is not None else 1


def as_inputs(images) -> np.ndarray:
    """Images as the model takes them: float32 in [0, 1] (uint8 ones are scaled)."""
    if images.dtype == np.uint8:
        return np.asarray(images, dtype=np.float32) / 255.0
    return np.asarray(images, dtype=np.float32)


class Batches(keras.utils.PyDataset):
    """Batches of ``images[indices]`` (uint8, e.g. a memory-mapped cache, or floats), read one
    batch ahead in a thread so that reading overlaps the training step.

    Training batches are shuffled every epoch and, with an ``augment`` function, augmented on
    the device by it (``augment.Augmentation``); the order and the random draws depend only on
    the seed, the epoch and the batch index. With ``multiple`` > 1 (data-parallel training over
    that many devices) every batch holds a multiple of it: the batch size is rounded down to
    one, and the few images of a last batch that would not divide evenly wait for the next
    epoch's shuffle.
    """

    def __init__(
        self,
        images,
        labels,
        indices,
        batch_size: int,
        augment=None,
        seed: int = 0,
        shuffle: bool = True,
        multiple: int | None = None,
    ):
        super().__init__()
        multiple = multiple or device_multiple()
        self.images, self.labels = images, np.asarray(labels)
        self.indices = np.asarray(indices)
        self.batch_size = max(multiple, batch_size - batch_size % multiple)
        self.augment, self.seed, self.shuffle, self.multiple = augment, seed, shuffle, multiple
        self.epoch = 0
        self._sizes = self._batch_sizes()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batches")
        self._ahead: tuple[tuple[int, int], Future] | None = None

    def _batch_sizes(self) -> list[int]:
        full, rest = divmod(len(self.indices), self.batch_size)
        rest -= rest % self.multiple
        return [self.batch_size] * full + ([rest] if rest else [])

    def __len__(self) -> int:
        return len(self._sizes)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, epoch]).permutation(self.indices)

    def _make(self, epoch: int, index: int):
        start = index * self.batch_size
        chosen = np.sort(self._order(epoch)[start : start + self._sizes[index]])
        images, labels = self.images[chosen], self.labels[chosen]
        if self.augment:
            return self.augment(images, epoch, index), labels
        return as_inputs(images), labels

    def __getitem__(self, index: int):
        if self._ahead and self._ahead[0] == (self.epoch, index):
            batch = self._ahead[1].result()
        else:
            batch = self._make(self.epoch, index)
        following = index + 1
        if following < len(self):
            future = self._pool.submit(self._make, self.epoch, following)
            self._ahead = ((self.epoch, following), future)
        return batch

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._ahead = None


def _stopping(params: TrainParams, warmup: int, checkpoint_path) -> list:
    """Early stopping on validation loss (best weights restored, not before ``warmup``
    epochs), the step size halved on plateaus, and the best model kept (if a path is given)."""
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=params.patience,
            restore_best_weights=True,
            start_from_epoch=warmup,
        ),
        # halving the step size when validation loss stalls is what gets the last half percent
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, params.patience // 3), min_lr=1e-5
        ),
    ]
    if checkpoint_path is not None:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(checkpoint_path), monitor="val_loss", save_best_only=True
            )
        )
    return callbacks


def train(
    model: keras.Model,
    images,
    labels,
    train_indices,
    validation_indices,
    params: TrainParams,
    augment=None,
    checkpoint_path: str | Path | None = None,
    seed: int = 42,
    verbose: int | str = 2,
    callbacks: list | None = None,
    multiple: int | None = None,
) -> dict[str, list[float]]:
    """Fit a compiled model with early stopping on validation loss (best weights restored).

    Args:
        images, labels: the whole split (uint8 images are scaled per batch).
        train_indices, validation_indices: which images train and which validate (no copies).
        augment: applied to each training batch (``augment.Augmentation``), or None.
        checkpoint_path: where to keep the best model so far (``.keras``), if given.
        seed: seed of the batch order.
        callbacks: more Keras callbacks (e.g. progress reporting).
        multiple: the number of devices a data-parallel run splits each batch over (default:
            the distribution's, ``device_multiple``).

    Returns:
        The training history: ``{"loss": [...], "val_loss": [...], "accuracy": [...], ...}``.
    """
    batches = Batches(
        images, labels, train_indices, params.batch_size, augment, seed, True, multiple
    )
    validation = Batches(
        images, labels, validation_indices, 256, None, seed, shuffle=False, multiple=multiple
    )
    # Small data sets give few steps an epoch, and batch-norm statistics need about
    # WARMUP_STEPS to settle: judging (and keeping "best" weights) earlier stops on a fluke.
    warmup = min(params.epochs, -(-WARMUP_STEPS // len(batches)))
    callbacks = [*(callbacks or []), *_stopping(params, warmup, checkpoint_path)]
    history = model.fit(
        batches,
        validation_data=validation,
        epochs=params.epochs,
        callbacks=callbacks,
        verbose=verbose,
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save as a ``.keras`` file, written to a temporary name and renamed into place."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial.keras")
    model.save(partial)
    os.replace(partial, path)
    return path


def load_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` model file.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return keras.models.load_model(path)


def widen_head(
    model: keras.Model, old_classes: list[str], new_classes: list[str], l2: float = 1e-4
) -> keras.Model:
    """Return a model for ``new_classes`` that keeps every layer but the head.

    The new head starts from the old head's weights for the classes both lists share (so the
    model predicts the old classes as before) and from small random weights for the new ones.

    Raises:
        ValueError: a class of ``old_classes`` is missing from ``new_classes``.
    """
    missing = [name for name in old_classes if name not in new_classes]
    if missing:
        raise ValueError(f"new class list drops {missing}; classes can be added, not removed")
    if list(old_classes) == list(new_classes):
        return model
    old_head = model.get_layer(HEAD_NAME)
    features = model.get_layer(FEATURES_NAME).output
    head = layers.Dense(
        len(new_classes),
        activation="softmax",
        kernel_regularizer=regularizers.L2(l2),
        name=HEAD_NAME,
    )
    widened = keras.Model(model.input, head(features), name=model.name)
    kernel, bias = (np.asarray(w) for w in old_head.get_weights())
    new_kernel, new_bias = (np.asarray(w).copy() for w in head.get_weights())
    for old_index, name in enumerate(old_classes):
        new_index = new_classes.index(name)
        new_kernel[:, new_index], new_bias[new_index] = kernel[:, old_index], bias[old_index]
    head.set_weights([new_kernel, new_bias])
    return widened


def predict_proba(
    model: keras.Model, images, batch_size: int = 256, multiple: int | None = None
) -> np.ndarray:
    """Class probabilities (inference mode) of images read batch by batch (uint8 or floats in
    [0, 1]; a memory map is never read whole). Under a data-parallel distribution the last
    batch is padded to a multiple of the devices and the padding's rows dropped."""
    multiple = multiple or device_multiple()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = as_inputs(images[start : start + batch_size])
        size = len(batch)
        padding = -size % multiple
        if padding:
            batch = np.concatenate([batch, np.zeros((padding, *batch.shape[1:]), batch.dtype)])
        outputs.append(np.asarray(model.predict_on_batch(batch))[:size])
    if not outputs:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(outputs)
