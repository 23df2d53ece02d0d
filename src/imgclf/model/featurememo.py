"""A frozen EfficientNet-Lite's pooled features, computed once per image and process.

Training a head on a pretrained backbone reads the same features several times: the model
choice (``choice.choose``) or the tap choice (``taps.choose_tap``) scores every tap on the
training images, the head is fitted on them (``training._fit_head``), and the temperature and
the unknown detector are fitted on them again (``posthoc.fit``). Each read is a forward pass
of the backbone over the images, the slowest part of head-only training by far. Here each
pooled tap output of each image is kept once computed, under a key made of all that
determines it: the image's bytes, the layers in front of the backbone (channels, resizing,
scaling: their configuration without their names) and a digest of the backbone's weights
that the output depends on (the stem and blocks; the final convolution too for ``top``).
So the model choice's ``all`` features serve a model built with ``mid``, and a backbone whose
blocks were fine-tuned has other weights, so other keys: nothing stale can be read.

Other backbones (``keras.applications``) are computed every time. ``IMGCLF_FEATURE_MEMO=0``
turns the memo off (a benchmark's side-by-side run); at most ``MAX_BYTES`` of features are
kept, the oldest backbone's dropped first.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from imgclf import config

#: Features kept at most (float32), over all backbones: the oldest backbone's go first.
MAX_BYTES = 256 * 2**20
#: Images read (and digested) at a time: a memory-mapped set is never read whole.
CHUNK = 1024
#: Layer-name prefixes of an EfficientNet-Lite (``efficientnet_lite.build``); "top" is the
#: final convolution, which only the ``top`` output depends on.
STEM_AND_BLOCKS, TOP = ("stem", "block"), "top"

_lock = threading.Lock()
_memo: OrderedDict[tuple, dict[bytes, np.ndarray]] = OrderedDict()
_sizes: dict[tuple, int] = {}


def enabled() -> bool:
    """Whether features are kept (the setting ``IMGCLF_FEATURE_MEMO``, 1 by default).

    Raises:
        ConfigError: a value other than 0 or 1.
    """
    return config.feature_memo()


def clear() -> None:
    """Forget every kept feature."""
    with _lock:
        _memo.clear()
        _sizes.clear()


def kept_bytes() -> int:
    """Bytes of features kept now."""
    with _lock:
        return sum(_sizes.values())


def features(model, base, images, compute: Callable[[object], np.ndarray]) -> np.ndarray:
    """``compute(images)`` (the pooled features of ``model``, whose backbone is the nested
    ``base``), with the rows of images seen before read from the memo and only the others
    computed; ``images`` is anything ``compute`` takes that numpy can index by rows."""
    keys = _output_keys(model, base) if enabled() and len(images) else None
    if keys is None:
        return compute(images)
    digests = _digests(images)
    with _lock:
        kept = [_memo.get(key, {}) for key, _ in keys]
        known = {
            index: np.concatenate([rows[digest] for rows in kept])
            for index, digest in enumerate(digests)
            if all(digest in rows for rows in kept)
        }
    missing = np.array([i for i in range(len(digests)) if i not in known], dtype=np.int64)
    if not len(missing):
        return np.stack([known[i] for i in range(len(digests))])
    fresh = np.asarray(compute(images[missing]), np.float32)
    _store(keys, [digests[i] for i in missing], fresh)
    if not known:
        return fresh
    out = np.empty((len(digests), fresh.shape[1]), np.float32)
    out[missing] = fresh
    for index, row in known.items():
        out[index] = row
    return out


def _store(keys: list[tuple[tuple, int]], digests: list[bytes], fresh: np.ndarray) -> None:
    starts = np.cumsum([0] + [width for _, width in keys])
    with _lock:
        for (key, width), start in zip(keys, starts[:-1], strict=True):
            rows = _memo.setdefault(key, {})
            _memo.move_to_end(key)
            for digest, row in zip(digests, fresh[:, start : start + width], strict=True):
                if digest not in rows:
                    rows[digest] = row.copy()
                    _sizes[key] = _sizes.get(key, 0) + row.nbytes
        while sum(_sizes.values()) > MAX_BYTES and len(_memo) > 1:
            oldest, _ = _memo.popitem(last=False)
            _sizes.pop(oldest, None)
        if sum(_sizes.values()) > MAX_BYTES:  # one backbone's features alone: keep none
            _memo.clear()
            _sizes.clear()


def _digests(images) -> list[bytes]:
    """A 16-byte digest of each image's shape, type and bytes, read ``CHUNK`` at a time."""
    out = []
    for start in range(0, len(images), CHUNK):
        chunk = np.ascontiguousarray(np.asarray(images[start : start + CHUNK]))
        head = f"{chunk.dtype.str}{chunk.shape[1:]}".encode()
        out.extend(hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in chunk)
    return out


def _output_keys(model, base) -> list[tuple[tuple, int]] | None:
    """``[(key, width)]`` for each of ``base``'s outputs in order (each pooled to ``width``
    features), or None where ``base`` is not an EfficientNet-Lite."""
    names = [layer.name for layer in base.layers if layer.weights]
    if not names or not all(name.startswith((*STEM_AND_BLOCKS, TOP)) for name in names):
        return None
    position = {id(tensor): index for index, tensor in enumerate(base.outputs)}
    outputs = [None] * len(base.outputs)
    for layer in base.layers:
        if id(layer.output) in position:
            outputs[position[id(layer.output)]] = layer.name
    if None in outputs:
        return None
    front = _front(model, base)
    blocks = _weights_digest(base, STEM_AND_BLOCKS)
    every = _weights_digest(base, (*STEM_AND_BLOCKS, TOP))
    return [
        (
            (front, name, every if name.startswith(TOP) else blocks),
            int(tensor.shape[-1]),
        )
        for name, tensor in zip(outputs, base.outputs, strict=True)
    ]


def _front(model, base) -> str:
    """The configuration of the layers between the model's input and ``base`` (names out)."""
    parts = [repr(model.input_shape), repr(base.input_shape)]
    for layer in model.layers:
        if layer is base:
            break
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        parts.append(type(layer).__name__ + json.dumps(config, sort_keys=True, default=repr))
    return "|".join(parts)


def _weights_digest(base, prefixes: tuple[str, ...]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for layer in base.layers:
        if not layer.name.startswith(prefixes):
            continue
        for variable in layer.weights:
            value = np.ascontiguousarray(np.asarray(variable))
            digest.update(f"{layer.name}/{variable.name}{value.dtype.str}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.digest()
