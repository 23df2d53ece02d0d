"""Build, compile, train, save, load and fine-tune the classifier (Keras 3 on JAX).

Batches and devices are ``imgclf.model.batches``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras  # the backend is chosen by importing the package (imgclf/__init__.py)
import numpy as np
from keras import layers, regularizers

from imgclf.model.batches import Batches, as_inputs, device_multiple

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
