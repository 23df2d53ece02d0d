"""Read a PyTorch state dict saved in the legacy (pre-1.6, not zip) format, without torch, and
refuse anything else: pretrained weights that ship as ``.pth`` files become NumPy arrays.

The legacy format is a run of pickles: a magic number, the protocol version (1001), the system
information, the state dict (whose tensors name their storages by persistent id), the list of
storage keys; then each storage's raw little-endian bytes after an 8-byte element count.

Unpickling runs code named by the file, so ``Reader`` is restricted: it resolves only the few
globals a state dict names (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
and the storage types), each mapped to a function here; any other global is refused with
``UnsafeWeights`` naming it, before anything is built. Tensors come back as NumPy arrays.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: Storage types a state dict may name, and the NumPy type of their elements.
STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeWeights(ValueError):
    """The file is not a plain legacy state dict (it names code, or its structure is wrong)."""


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: type
    size: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, shape, stride, requires_grad=False, hooks=None, *rest):
    if not isinstance(storage, _Storage):
        raise UnsafeWeights("a tensor whose storage is not a persistent storage reference")
    return _Tensor(storage, int(offset), tuple(map(int, shape)), tuple(map(int, stride)))


class _StorageType:
    def __init__(self, name: str):
        self.dtype = STORAGES[name]


class Reader(pickle.Unpickler):
    """An unpickler that builds only what a state dict holds (see the module docstring)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGES:
            return _StorageType(name)
        raise UnsafeWeights(f"the weights file names {module}.{name}: refused (not a state dict)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeWeights(f"unexpected persistent id {pid!r:.80}")
        kind, key, size = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(kind, _StorageType):
            raise UnsafeWeights("a storage of an unknown type")
        storage = self.storages.setdefault(key, _Storage(key, kind.dtype, size))
        return storage


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a legacy ``.pth`` file, as ``{name: array}`` in the file's order.

    Raises:
        UnsafeWeights: not a legacy state dict, or it names anything but the allowed globals.
    """
    data = Path(path).read_bytes()
    stream = io.BytesIO(data)
    header = []
    for _ in range(3):
        try:
            header.append(Reader(stream).load())
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise UnsafeWeights(f"not a legacy PyTorch weights file: {error}") from None
    if header[0] != MAGIC_NUMBER or header[1] != PROTOCOL_VERSION:
        raise UnsafeWeights("not a legacy PyTorch weights file (magic number or protocol)")
    if not isinstance(header[2], dict) or not header[2].get("little_endian", False):
        raise UnsafeWeights("the weights were saved big-endian or without system information")
    reader = Reader(stream)
    state = reader.load()
    keys = Reader(stream).load()
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise UnsafeWeights("the file does not hold a state dict and its storage keys")
    arrays = {}
    for key in keys:
        storage = reader.storages.get(str(key))
        if storage is None:
            raise UnsafeWeights(f"storage {key!r} is listed but no tensor uses it")
        (count,) = struct.unpack("<q", stream.read(8))
        item = np.dtype(storage.dtype).itemsize
        if count != storage.size:
            raise UnsafeWeights(
                f"storage {key!r}: {count} elements, the tensor said {storage.size}"
            )
        raw = stream.read(count * item)
        if len(raw) != count * item:
            raise UnsafeWeights(f"storage {key!r} is truncated")
        arrays[storage.key] = np.frombuffer(raw, dtype=storage.dtype)
    result = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _Tensor):
            raise UnsafeWeights(f"{name!r} is not a tensor")
        flat = arrays[tensor.storage.key]
        if len(tensor.shape) != len(tensor.stride) or min(tensor.shape, default=1) < 0:
            raise UnsafeWeights(f"{name!r}: shape {tensor.shape} and stride {tensor.stride}")
        last = tensor.offset + sum(
            (n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True)
        )
        if (
            tensor.offset < 0
            or min(tensor.stride, default=0) < 0
            or (0 not in tensor.shape and last >= len(flat))
        ):
            raise UnsafeWeights(f"{name!r} reaches outside its storage")  # never read beyond it
        strides = tuple(s * flat.itemsize for s in tensor.stride)
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :], shape=tensor.shape, strides=strides, writeable=False
        )
        result[str(name)] = np.array(view)  # a copy: contiguous, owned
    return result
