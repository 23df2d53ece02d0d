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

A piece pooled over a region of the output (the ``grid`` tap) has a key of its own.
Other backbones (``keras.applications``) are computed every time. ``IMGCLF_FEATURE_MEMO=0``
turns the memo off (a benchmark's side-by-side run). At most ``MAX_BYTES`` are kept, the least
recently used backbone's dropped first; what cannot fit is computed and not kept.
``posthoc.fit``, a training run's last reader, frees them all.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from imgclf import config

#: Features kept at most (float32 rows and their bookkeeping), over all backbones: the least
#: recently used backbone's go first; a request that cannot fit is computed and not kept.
MAX_BYTES = 256 * 2**20
#: Bookkeeping of a kept row (its array and its dictionary entry), counted against MAX_BYTES.
ROW_OVERHEAD = 200
#: Images read (and digested, and computed) at a time: a memory-mapped set is never read whole.
CHUNK = 1024
#: Layer-name prefixes of an EfficientNet-Lite (``efficientnet_lite.build``); "top" is the
#: final convolution, which only the ``top`` output depends on.
STEM_AND_BLOCKS, TOP = ("stem", "block"), "top"

_lock = threading.Lock()
#: {backbone (front, digest of stem and blocks): {output key: {image digest: row}}}
_memo: OrderedDict[tuple, dict[tuple, dict[bytes, np.ndarray]]] = OrderedDict()
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
    """Bytes of features kept now (with their bookkeeping)."""
    with _lock:
        return sum(_sizes.values())


def features(model, base, pooled, images, compute: Callable[[object], np.ndarray]) -> np.ndarray:
    """``compute(images)`` (the pooled features of ``model``, the tensor ``pooled``, whose
    backbone is the nested ``base``), with the rows of images seen before read from the memo
    and only the others computed, ``CHUNK`` at a time; ``images`` is anything ``compute``
    takes that numpy can index by rows (an array, a memory-mapped cache)."""
    found = _output_keys(model, base, pooled) if enabled() and len(images) else None
    if found is None:
        return compute(images)
    group, keys = found
    digests = _digests(images)
    with _lock:
        kept = [_memo.get(group, {}).get(key, {}) for key, _ in keys]
        known = {
            index: np.concatenate([rows[digest] for rows in kept])
            for index, digest in enumerate(digests)
            if all(digest in rows for rows in kept)
        }
        if known:
            _memo.move_to_end(group)
    missing = np.array([i for i in range(len(digests)) if i not in known], dtype=np.int64)
    width = sum(w for _, w in keys)
    out = np.empty((len(digests), width), np.float32)
    for index, row in known.items():
        out[index] = row
    for start in range(0, len(missing), CHUNK):
        part = missing[start : start + CHUNK]
        out[part] = np.asarray(compute(images[part]), np.float32)
    if len(missing):
        _store(group, keys, [digests[i] for i in missing], out[missing])
    return out


def _store(group: tuple, keys: list, digests: list[bytes], fresh: np.ndarray) -> None:
    """Keep ``fresh``'s rows under ``group`` if they fit in ``MAX_BYTES`` once the least
    recently used other backbones are dropped; else keep nothing new."""
    starts = np.cumsum([0] + [width for _, width in keys])
    with _lock:
        outputs = _memo.get(group, {})
        new = [
            (key, start, width, _unseen(digests, outputs.get(key, {})))
            for (key, width), start in zip(keys, starts[:-1], strict=True)
        ]
        needed = sum((4 * width + ROW_OVERHEAD) * len(rows) for _, _, width, rows in new)
        others = [g for g in _memo if g != group]
        while others and sum(_sizes.values()) + needed > MAX_BYTES:
            dropped = others.pop(0)
            del _memo[dropped]
            _sizes.pop(dropped, None)
        if sum(_sizes.values()) + needed > MAX_BYTES:
            return
        outputs = _memo.setdefault(group, {})
        _memo.move_to_end(group)
        for key, start, width, rows in new:
            kept = outputs.setdefault(key, {})
            for index in rows:
                kept[digests[index]] = fresh[index, start : start + width].copy()
        _sizes[group] = _sizes.get(group, 0) + needed


def _unseen(digests: list[bytes], rows: dict) -> list[int]:
    """The index of each digest not in ``rows``, once each."""
    return list({d: i for i, d in enumerate(digests) if d not in rows}.values())


def _digests(images) -> list[bytes]:
    """A 16-byte digest of each image's shape, type and bytes, read ``CHUNK`` at a time."""
    out = []
    for start in range(0, len(images), CHUNK):
        chunk = np.ascontiguousarray(np.asarray(images[start : start + CHUNK]))
        head = f"{chunk.dtype.str}{chunk.shape[1:]}".encode()
        out.extend(hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in chunk)
    return out


def _output_keys(model, base, pooled) -> tuple[tuple, list[tuple[tuple, int]]] | None:
    """``(group, [(key, width)])``: the backbone's group (what every output depends on) and
    a key for each piece of ``pooled`` in order (``_pieces``: an output of ``base`` pooled
    over the whole map or a region, to ``width`` features), or None where ``base`` is not an
    EfficientNet-Lite."""
    from imgclf.model import efficientnet_lite

    names = [layer.name for layer in base.layers if layer.weights]
    if not names or not all(name.startswith((*STEM_AND_BLOCKS, TOP)) for name in names):
        return None
    if not base.layers[0].name.startswith(tuple(efficientnet_lite.VARIANTS)):
        return None
    position = {id(tensor): index for index, tensor in enumerate(base.outputs)}
    outputs = [None] * len(base.outputs)
    for layer in base.layers:
        if id(layer.output) in position:
            outputs[position[id(layer.output)]] = layer.name
    pieces = _pieces(base, pooled)
    if None in outputs or pieces is None:
        return None
    group = (_front(model, base), _weights_digest(base, STEM_AND_BLOCKS))
    every = _weights_digest(base, (*STEM_AND_BLOCKS, TOP))
    keys = []
    for index, region, width in pieces:
        name = outputs[index]
        keys.append(((name, every if name.startswith(TOP) else b"", region), width))
    return group, keys


def _pieces(base, pooled) -> list[tuple[int, tuple, int]] | None:
    """``[(output, region, width)]``: for each part of the ``pooled`` features in order,
    which of ``base``'s outputs it pools, over which region (``()``: the whole map; else a
    crop's margins, ``efficientnet_lite._grid``) and how many features it gives; None for any other
    shape of model."""
    last = pooled._keras_history.operation
    parts = last.input if type(last).__name__ == "Concatenate" else [pooled]
    found = []
    for part in parts:
        pool = part._keras_history.operation
        if type(pool).__name__ != "GlobalAveragePooling2D":
            return None
        source, region = pool.input, ()
        crop = source._keras_history.operation
        if type(crop).__name__ == "Cropping2D":
            source, region = crop.input, tuple(map(tuple, crop.cropping))
        if source._keras_history.operation is not base:
            return None
        found.append((source._keras_history.tensor_index, region, int(part.shape[-1])))
    return found


def _front(model, base) -> str:
    """The configuration of the layers between the model's input and ``base`` (names out)."""
    parts = [repr(model.input_shape), repr(base.input_shape)]
    for layer in model.layers:
        if layer is base:
            break
        described = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        parts.append(type(layer).__name__ + json.dumps(described, sort_keys=True, default=repr))
    return "|".join(parts)


def _weights_digest(base, prefixes: tuple[str, ...]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for layer in base.layers:
        if not layer.name.startswith(prefixes):
            continue
        digest.update(f"{layer.name}:{layer.dtype_policy.name}".encode())
        for variable in layer.weights:
            value = np.ascontiguousarray(np.asarray(variable))
            digest.update(f"{layer.name}/{variable.name}{value.dtype.str}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.digest()
