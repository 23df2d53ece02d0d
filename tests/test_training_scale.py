"""Training at scale: the decoded-image cache, augmentation as one compiled function, batches
read by index, and data-parallel training over several (here: forced host) devices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
from conftest import write_image

from imgclf.config import PROJECT_ROOT
from imgclf.data import cache, folders
from imgclf.data.augment import Augmentation
from imgclf.data.preprocessing import decode
from imgclf.model import batches, network


@pytest.fixture
def split(tmp_path):
    for index in range(12):
        write_image(tmp_path / "train" / ("a" if index % 2 else "b") / f"{index}.png",
                    size=(20 + index, 14), mode="RGB", value=index)  # fmt: skip
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    return folders.discover(tmp_path / "train")


def test_the_cache_holds_exactly_what_the_decoder_gives_as_uint8_and_lists_skipped_files(
    split, tmp_path
):
    cached = cache.load(split, 16, "rgb", tmp_path / "cache")
    assert cached.images.dtype == np.uint8 and isinstance(cached.images, cache.ImageFile)
    assert cached.images.shape == (12, 16, 16, 3) and len(cached.labels) == 12
    assert [p.name for p in cached.paths] == [
        p.name for p in split.paths if p.name != "broken.png"
    ]
    assert len(cached.skipped) == 1 and "broken.png" in cached.skipped[0][0]
    for row, path in enumerate(cached.paths):
        expected = decode(path, 16, "rgb").array
        assert np.array_equal(cached.images[row], np.rint(expected * 255).astype(np.uint8))
        assert cached.labels[row] == split.labels[split.paths.index(path)]


def test_the_cache_is_reused_and_rebuilt_when_partial_corrupt_or_from_another_decoder(
    split, tmp_path, monkeypatch
):
    folder = tmp_path / "cache"
    first = cache.load(split, 16, "rgb", folder)
    built = {"count": 0}
    original = cache._build

    def counting(*args, **kwargs):
        built["count"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(cache, "_build", counting)
    assert cache.load(split, 16, "rgb", folder).key == first.key and built["count"] == 0
    assert cache.load(split, 12, "rgb", folder).images.shape[1] == 12 and built["count"] == 1
    meta, array = folder / f"{first.key}.json", folder / f"{first.key}.npy"
    meta.unlink()  # as if the run died between the array and its description
    assert np.array_equal(cache.load(split, 16, "rgb", folder).images, first.images)
    assert built["count"] == 2
    array.write_bytes(array.read_bytes()[:100])  # cut short
    assert np.array_equal(cache.load(split, 16, "rgb", folder).images, first.images)
    assert built["count"] == 3
    monkeypatch.setattr(cache, "DECODER_VERSION", cache.DECODER_VERSION + 1)
    cache.load(split, 16, "rgb", folder)
    assert built["count"] == 4
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no partial files left
    killed = folder / f".{first.key}-abc.npy"  # a build killed midway, long ago
    killed.write_bytes(b"partial")
    os.utime(killed, (0, 0))
    cache.load(split, 20, "rgb", folder)
    assert not killed.exists()


def test_a_full_disk_is_refused_naming_the_folder_and_the_space_needed(
    split, tmp_path, monkeypatch
):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: usage(10, 10, 1024))
    with pytest.raises(cache.CacheError, match=r"cache.*needs 1 MiB, 0 MiB are free"):
        cache.load(split, 16, "rgb", tmp_path / "cache")


def test_a_pool_of_processes_decodes_the_same_pixels(split, tmp_path, monkeypatch):
    serial = cache.load(split, 16, "rgb", tmp_path / "one")
    monkeypatch.setattr(cache, "POOL_THRESHOLD", 1)
    monkeypatch.setattr(cache, "CHUNK", 3)
    pooled = cache.load(split, 16, "rgb", tmp_path / "pool", workers=2)
    assert np.array_equal(serial.images, pooled.images)
    assert np.array_equal(serial.labels, pooled.labels) and serial.skipped == pooled.skipped


def test_augmentation_is_reproducible_varies_by_batch_and_keeps_the_range():
    images = np.random.default_rng(0).integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
    augment = Augmentation(0.05, 0.1, 0.1, True, seed=3)
    first = np.asarray(augment(images, 0, 0))
    assert first.dtype == np.float32 and first.shape == images.shape
    assert 0 <= first.min() and first.max() <= 1
    assert np.array_equal(
        first, np.asarray(Augmentation(0.05, 0.1, 0.1, True, seed=3)(images, 0, 0))
    )
    assert not np.array_equal(first, np.asarray(augment(images, 0, 1)))
    assert not np.array_equal(first, np.asarray(augment(images, 1, 0)))
    none = Augmentation(0, 0, 0, False)
    assert np.allclose(np.asarray(none(images, 0, 0)), images / 255.0)
    flipped = np.asarray(Augmentation(0, 0, 0, True, seed=1)(images, 0, 0))
    for image, original in zip(flipped, images / 255.0, strict=True):
        assert np.allclose(image, original, atol=1e-6) or np.allclose(
            image, original[:, ::-1], atol=1e-6
        )
    with pytest.raises(ValueError, match="rotation"):
        Augmentation(rotation=1.5)


def test_batches_read_by_index_split_evenly_over_devices_and_repeat_with_the_seed():
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 1)
    labels = np.arange(10)
    made = batches.Batches(images, labels, np.arange(9), 4, seed=1, multiple=2)
    sizes = [len(made[i][1]) for i in range(len(made))]
    assert sizes == [4, 4]  # the ninth image waits: 1 does not split over 2 devices
    again = batches.Batches(images, labels, np.arange(9), 4, seed=1, multiple=2)
    assert [list(again[i][1]) for i in range(2)] == [list(made[i][1]) for i in range(2)]
    made.on_epoch_end()
    assert {int(v) for i in range(2) for v in made[i][1]} <= set(range(9))
    x, y = made[0]
    assert x.dtype == np.float32 and np.allclose(x[:, 0, 0, 0] * 255, images[y, 0, 0, 0])
    odd = batches.Batches(images, labels, np.arange(10), 3, shuffle=False, multiple=2)
    assert odd.batch_size == 2 and len(odd) == 5


@pytest.mark.slow
def test_make_train_with_two_forced_devices_trains_data_parallel(digits_dir, tmp_path):
    shutil.copytree(digits_dir / "train", tmp_path / "data" / "train")
    shutil.copytree(digits_dir / "test", tmp_path / "data" / "test")
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "MODELS_DIR": str(tmp_path / "models"),
        "REPORTS_DIR": str(tmp_path / "reports"),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "DISTRIBUTION": "data_parallel",
        "IMAGE_SIZE": "16",
    }
    upgrade = [sys.executable, "-m", "imgclf.cli", "db", "upgrade"]  # as make train does
    subprocess.run(upgrade, cwd=PROJECT_ROOT, env=env, check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "run", "train", "-p", "epochs", "2",
         "-p", "patience", "2", "-p", "batch_size", "63", "-p", "backbone", ""],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = json.loads((tmp_path / "models" / "v0001" / "metadata.json").read_text())
    assert info["distribution"]["distribution"] == "data_parallel"
    assert info["distribution"]["count"] == 2 and len(info["distribution"]["devices"]) == 2
    assert info["test_metrics"]["n"] == 360  # every test image, the odd last batch included
    notebook = next((tmp_path / "reports").glob("*-train/notebook.ipynb")).read_text()
    assert "Training on **2 device(s)** (data_parallel)" in notebook


def test_predictions_over_devices_pad_the_last_batch_and_drop_the_padding():
    model = network.compile_model(network.build_model(3, (8, 8, 1), filters=(4,)))
    images = np.random.default_rng(1).integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)
    one = network.predict_proba(model, images, batch_size=4, multiple=1)
    padded = network.predict_proba(model, images, batch_size=4, multiple=3)
    assert one.shape == padded.shape == (7, 3)
    assert np.allclose(one, padded, atol=1e-6)
    assert np.allclose(one, network.predict_proba(model, images / 255.0), atol=1e-6)


def test_the_cache_file_reads_rows_like_an_array_without_mapping_it(tmp_path):
    array = np.random.default_rng(2).integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    rows = cache.ImageFile(tmp_path / "a.npy", rows=7)
    kept = array[:7]
    assert rows.shape == (7, 4, 4, 3) and len(rows) == 7 and rows.nbytes == kept.nbytes
    assert np.array_equal(rows[2], kept[2]) and np.array_equal(rows[-1], kept[-1])
    assert np.array_equal(rows[1:5], kept[1:5]) and np.array_equal(rows[::3], kept[::3])
    assert np.array_equal(rows[np.array([6, 0, 3])], kept[[6, 0, 3]])
    assert np.array_equal(np.stack(list(rows)), kept) and np.array_equal(np.asarray(rows), kept)
    # numpy's indexing past the rows: flipped images, one channel, one image's column
    assert np.array_equal(rows[:, :, ::-1], kept[:, :, ::-1])
    assert np.array_equal(rows[np.array([1, 4]), ..., 0], kept[[1, 4], ..., 0])
    assert np.array_equal(rows[3, :, 1], kept[3, :, 1]) and np.array_equal(rows[...], kept)
    with pytest.raises(TypeError, match="rows first"):
        rows[[0, 1], [0, 1]]
    with pytest.raises(IndexError):
        rows[7]
    (tmp_path / "short.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-10])
    with pytest.raises(ValueError, match="shorter"):
        cache.ImageFile(tmp_path / "short.npy")
    with pytest.raises(ValueError, match="holds 9 rows"):
        cache.ImageFile(tmp_path / "a.npy", rows=10)
