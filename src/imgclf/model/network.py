"""Build, compile, train, save, load and fine-tune the classifier (Keras 3 on JAX).

Batches and devices are ``imgclf.model.batches``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras  # the backend is chosen by importing the package (imgclf/__init__.py)
import numpy as np
from keras import layers, regularizers

from imgclf.model import efficientnet_lite, featurememo
from imgclf.model.batches import Batches, as_inputs, device_multiple

HEAD_NAME = "head"
#: Optimisation steps before early stopping may judge the validation loss.
WARMUP_STEPS = 100
FEATURES_NAME = "features"
#: The pretrained feature extractor's name inside the classifier (``freeze_backbone``).
BACKBONE_NAME = "backbone"

#: Backbones from keras.applications: constructor and the scale it expects its input in.
#: Our input is always [0, 1]; a Rescaling layer maps it to the backbone's range.
BACKBONES = {
    "mobilenet_v2": ("MobileNetV2", 2.0, -1.0),
    "efficientnet_b0": ("EfficientNetB0", 255.0, 0.0),
    "resnet50": ("ResNet50", 255.0, 0.0),
}


@dataclass
class TrainParams:
    """Hyper-parameters of a training run (the notebooks' parameters map onto these; a test
    keeps notebook 02's defaults equal to these)."""

    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 8
    l2: float = 1e-4
    dropout: float = 0.3
    validation_fraction: float = 0.1
    #: Classes with fewer training images than this share of the median class are repeated up
    #: to it every epoch (``training.oversample_rare``); 0 leaves the data as it is.
    balance: float = 0.5
    #: With a pretrained backbone (``has_backbone``): the head is trained first on the frozen
    #: backbone's features, then its last ``fine_tune_blocks`` blocks are trained with it for
    #: at most ``fine_tune_epochs`` at ``fine_tune_learning_rate`` (0 epochs: head only).
    fine_tune_blocks: int = 2
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-4
    #: The CNN from scratch: filters of its first block, doubled by each of the next two
    #: (``cnn_filters``). 16 suits a few thousand images; tens of thousands gain from 32.
    cnn_width: int = 16


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and Keras (JAX) so that a run can be repeated exactly."""
    keras.utils.set_random_seed(seed)


def cnn_filters(width: int) -> tuple[int, int, int]:
    """The CNN's three block widths for a first-block ``width`` (each block doubles it)."""
    if not 4 <= int(width) <= 256:
        raise ValueError(f"cnn_width={width}: expected 4 to 256 filters in the first block")
    return (int(width), 2 * int(width), 4 * int(width))


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


def survey_columns(model: keras.Model) -> dict[str, slice]:
    """Each tap's columns of the features of a model built with ``efficientnet_lite.SURVEY``."""
    return efficientnet_lite.survey_columns(model.get_layer(BACKBONE_NAME))


def _backbone(
    name: str,
    x,
    input_shape: tuple[int, int, int],
    weights: str | None,
    size: int | None,
    tap: str = "top",
):
    """The pretrained feature extractor on ``x`` (images in [0, 1]), pooled.

    Grayscale is repeated to three channels; an EfficientNet-Lite resizes its input to
    ``size`` (default: its native resolution) inside the model, so that data, evaluation and
    serving keep the data set's own size, and gives the features of ``tap``
    (``efficientnet_lite.TAPS`` or ``efficientnet_lite.SURVEY``; the others always give
    their last layer's)."""
    known = sorted({*BACKBONES, *efficientnet_lite.VARIANTS})
    if name not in known:
        raise ValueError(f"backbone={name!r}: expected one of {known} or None")
    if weights not in (None, "imagenet"):
        raise ValueError(f"backbone_weights={weights!r}: expected None or 'imagenet'")
    if input_shape[-1] == 1:  # pretrained backbones take three channels
        x = layers.Concatenate(name="to_rgb")([x, x, x])
    if name in efficientnet_lite.VARIANTS:
        size = size or efficientnet_lite.VARIANTS[name].resolution
        if tuple(input_shape[:2]) != (size, size):
            x = layers.Resizing(size, size, name="backbone_resize")(x)
        x = layers.Rescaling(
            efficientnet_lite.INPUT_SCALE, efficientnet_lite.INPUT_OFFSET, name="backbone_scale"
        )(x)
        shape = (size, size, 3)
        if weights == "imagenet":
            base = efficientnet_lite.pretrained(name, shape)
        else:
            base = efficientnet_lite.build(name, shape)
        return efficientnet_lite.pooled(base, x, tap, BACKBONE_NAME)
    if tap != "top":
        raise ValueError(f"backbone_tap={tap!r}: {name} gives its last layer's features only")
    constructor, scale, offset = BACKBONES[name]
    x = layers.Rescaling(scale, offset, name="backbone_scale")(x)
    try:
        base = getattr(keras.applications, constructor)(
            include_top=False, weights=weights, input_shape=(*input_shape[:2], 3)
        )
    except Exception as error:
        if weights is None:
            raise
        raise ValueError(
            f"could not load {weights!r} weights for {name} ({error}); keras.applications "
            "downloads them on first use and needs the network. Offline, use "
            "backbone=efficientnet_lite0 (its weights ship with a package) or "
            "backbone_weights=None."
        ) from None
    base.name = BACKBONE_NAME
    return layers.GlobalAveragePooling2D(name="backbone_pool")(base(x))


def build_model(
    num_classes: int,
    input_shape: tuple[int, int, int],
    l2: float = 1e-4,
    dropout: float = 0.3,
    backbone: str | None = None,
    backbone_weights: str | None = None,
    filters: tuple[int, ...] = (16, 32, 64),
    backbone_size: int | None = None,
    backbone_tap: str = "top",
) -> keras.Model:
    """Build the classifier: a feature extractor, dropout and a softmax head.

    The feature extractor is a small CNN (three double-convolution blocks with batch norm and
    L2 regularisation) or, with ``backbone``, a pretrained network: EfficientNet-Lite 0-2
    (``imgclf.model.efficientnet_lite``, ImageNet weights offline) or a ``keras.applications``
    one (ImageNet weights downloaded).

    Args:
        num_classes: size of the softmax head (at least 2).
        input_shape: ``(height, width, channels)`` of inputs scaled to [0, 1].
        backbone: None for the custom CNN, ``efficientnet_lite0`` (1, 2) or a key of
            ``BACKBONES``.
        backbone_weights: None (random) or ``"imagenet"`` (EfficientNet-Lite: from the
            installed package; the others download once).
        backbone_size: the side EfficientNet-Lite sees its input resized to (default: its
            native resolution, 224 for lite0).
        backbone_tap: which EfficientNet-Lite layers give the features
            (``efficientnet_lite.TAPS``; ``training.choose_tap`` chooses by cross-validation).
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
        x = _backbone(backbone, x, input_shape, backbone_weights, backbone_size, backbone_tap)
    else:
        for index, width in enumerate(filters):
            x = _conv_block(x, width, l2, name=f"block{index + 1}")
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name=FEATURES_NAME)(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=regularizers.L2(l2), name=HEAD_NAME
    )(x)
    return keras.Model(inputs, outputs, name="imgclf")


def has_backbone(model: keras.Model) -> bool:
    """Whether the classifier's features come from a pretrained backbone (``build_model``)."""
    return any(layer.name == BACKBONE_NAME for layer in model.layers)


def _trainable_groups(base: keras.Model) -> list[list]:
    """The backbone's weighted layers (BatchNorm aside) grouped by block, input first."""
    groups: dict[str, list] = {}
    for layer in base.layers:
        if not layer.weights or isinstance(layer, layers.BatchNormalization):
            continue
        if base.name == BACKBONE_NAME and layer.name.startswith(("block", "stem", "top")):
            key = layer.name.split("_")[0]  # EfficientNet-Lite: block7, top
        else:
            key = layer.name  # keras.applications: a layer is its own group
        groups.setdefault(key, []).append(layer)
    return list(groups.values())


def freeze_backbone(model: keras.Model, trainable_blocks: int = 0) -> int:
    """Freeze the backbone but for its last ``trainable_blocks`` blocks (EfficientNet-Lite:
    an inverted-residual block, or the final convolution; other backbones: a weighted layer
    each). BatchNorm layers stay frozen, which in Keras 3 also keeps them in inference mode
    (their statistics are ImageNet's, not a small batch's). Compile after calling this.

    Returns:
        How many backbone layers train.
    """
    base = model.get_layer(BACKBONE_NAME)
    base.trainable = True
    for layer in base.layers:
        layer.trainable = False
    groups = _trainable_groups(base)[-trainable_blocks:] if trainable_blocks > 0 else []
    for group in groups:
        for layer in group:
            layer.trainable = True
    return sum(len(group) for group in groups)


def head_model(model: keras.Model) -> keras.Model:
    """The classifier's dropout and head as a model of their own on pooled backbone features
    (the layers are shared: training it trains the classifier's head)."""
    pooled = model.get_layer(FEATURES_NAME).input
    inputs = keras.Input(shape=tuple(pooled.shape[1:]), name="backbone_features")
    outputs = model.get_layer(HEAD_NAME)(model.get_layer(FEATURES_NAME)(inputs))
    return keras.Model(inputs, outputs, name="head_on_features")


def backbone_features(
    model: keras.Model, images, batch_size: int = 64, reuse: bool = True
) -> np.ndarray:
    """The pooled backbone features of ``images`` (inference mode), batch by batch; with
    ``reuse``, an EfficientNet-Lite's features of images seen before are read from
    ``featurememo`` (the same weights and preprocessing: the same numbers)."""
    pooled = model.get_layer(FEATURES_NAME).input
    extractor = keras.Model(model.input, pooled, name="features_of")

    def compute(part) -> np.ndarray:
        return predict_proba(extractor, part, batch_size)

    if not reuse or not has_backbone(model):
        return compute(images)
    base = model.get_layer(BACKBONE_NAME)
    return featurememo.features(model, base, pooled, images, compute)


def describe_input(model: keras.Model) -> str:
    """One sentence on what the model does to an image before its features (for reports)."""
    height, width, channels = model.input_shape[1:]
    mode = "grayscale" if channels == 1 else "RGB"
    names = {layer.name: layer for layer in model.layers}
    if BACKBONE_NAME not in names:
        return f"Input: {width}x{height} {mode}, as the data set has it."
    steps = ["repeated to three channels"] if "to_rgb" in names else []
    if "backbone_resize" in names:
        resize = names["backbone_resize"]
        steps.append(f"resized to {resize.width}x{resize.height}")
    steps.append("scaled to the range the pretrained backbone was trained on")
    return f"Input: {width}x{height} {mode}, {', '.join(steps)} inside the model."


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
    warmup_steps: int = WARMUP_STEPS,
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
        warmup_steps: steps before early stopping may judge (a model whose batch-norm
            statistics are already settled, e.g. a frozen pretrained backbone's, needs none).

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
    warmup = min(params.epochs, -(-warmup_steps // len(batches)))
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
