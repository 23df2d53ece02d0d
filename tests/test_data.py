from pathlib import Path

import pytest
from conftest import write_image

from imgclf.data import cache, folders


def make_split(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        for index in range(count):
            write_image(root / name / f"img{index}.png", value=index)
    return root


def test_discover_labels_sorted_classes_with_spaces_hyphens_and_uppercase_endings(tmp_path):
    write_image(tmp_path / "sea-lion" / "A.JPG", mode="RGB", fmt="JPEG")
    write_image(tmp_path / "brown bear" / "b.webp", mode="RGB", fmt="WEBP")
    write_image(tmp_path / "brown bear" / "c.Bmp", fmt="BMP")
    (tmp_path / "brown bear" / ".DS_Store").write_bytes(b"junk")
    split = folders.discover(tmp_path)
    assert split.class_names == ["brown bear", "sea-lion"]
    assert split.counts() == {"brown bear": 2, "sea-lion": 1}


@pytest.mark.parametrize(
    "setup, message",
    [
        (None, "split folder not found"),
        (lambda root: make_split(root, {"only": 2}), "at least two"),
        (lambda root: (make_split(root, {"a": 1}), (root / "b").mkdir()), "class folder is empty"),
        (
            lambda root: (
                make_split(root, {"a": 1, "b": 1}),
                (root / "a" / "notes.txt").write_text("x"),
            ),
            "not an image file",
        ),
    ],
)
def test_discover_rejects_bad_layouts_naming_the_place(tmp_path, setup, message):
    root = tmp_path / "train"
    if setup is not None:
        root.mkdir()
        setup(root)
    with pytest.raises(folders.DataError, match=message):
        folders.discover(root)


def test_discover_rejects_test_class_unknown_to_training(tmp_path):
    make_split(tmp_path, {"a": 1, "b": 1, "c": 1})
    with pytest.raises(folders.DataError, match=r"\['c'\]"):
        folders.discover(tmp_path, class_names=["a", "b"])


def test_corrupt_image_is_skipped_and_listed(tmp_path):
    make_split(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    loaded = cache.load(
        folders.discover(tmp_path), 16, "grayscale", tmp_path / ".cache", workers=1
    )
    assert loaded.images[:].shape == (4, 16, 16, 1)
    assert [Path(p).name for p, _ in loaded.skipped] == ["broken.png"]


def test_fingerprint_changes_with_content_and_name_but_not_order(tmp_path):
    make_split(tmp_path, {"a": 2, "b": 2})
    split = folders.discover(tmp_path)
    first = folders.dataset_fingerprint(split)
    assert folders.fingerprint(list(reversed(split.paths)), tmp_path) == first
    write_image(split.paths[0], value=99)
    second = folders.dataset_fingerprint(split)
    assert second != first
    split.paths[0].rename(split.paths[0].with_name("renamed.png"))
    assert folders.dataset_fingerprint(folders.discover(tmp_path)) not in (first, second)


def test_prepare_digits_is_stratified_and_idempotent(tmp_path):
    assert folders.prepare_digits(tmp_path) is True
    train, test = folders.discover(tmp_path / "train"), folders.discover(tmp_path / "test")
    assert len(train.paths) + len(test.paths) == 1797
    assert min(test.counts().values()) >= 35
    assert folders.prepare_digits(tmp_path) is False
    assert not list(tmp_path.glob(".digits-*"))


def test_merge_uploads_appends_new_classes_after_existing(tmp_path):
    base = folders.discover(make_split(tmp_path / "train", {"a": 1, "b": 1}))
    write_image(tmp_path / "uploads" / "batch1" / "c" / "x.png")
    write_image(tmp_path / "uploads" / "batch2" / "a" / "y.png")
    merged = folders.merge_splits(base, folders.discover_uploads(tmp_path / "uploads"))
    assert merged.class_names == ["a", "b", "c"]
    assert merged.counts() == {"a": 2, "b": 1, "c": 1}


def write_idx(path: Path, array, magic_type: int = 0x08) -> Path:
    """An idx file as the MNIST family ships them (gzipped)."""
    import gzip

    import numpy as np

    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, magic_type, array.ndim])
    header += b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.tobytes())
    return path


def fake_fashion_package(folder: Path, per_split: int = 20) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        labels = np.arange(per_split) % 10
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (per_split, 28, 28))
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def test_fashion_mnist_is_read_offline_from_the_debian_package_layout(tmp_path):
    source = fake_fashion_package(tmp_path / "package")
    data_dir = tmp_path / "fashion"
    assert folders.prepare_public_dataset("fashion_mnist", data_dir, limit=15, source=source)
    train = folders.discover(data_dir / "train")
    assert train.class_names == sorted(folders.FASHION_MNIST_CLASSES)
    assert len(train.paths) == 15 and train.counts()["ankle_boot"] == 1
    assert (data_dir / "train" / "tshirt_top" / "fashion_mnist_00010.png").is_file()
    # a folder that holds a data set already is left alone
    assert not folders.prepare_public_dataset("fashion_mnist", data_dir, source=source)
    assert not list(data_dir.glob(".prepare-*"))


def test_idx_files_that_are_not_what_they_claim_are_refused(tmp_path):
    import numpy as np

    with pytest.raises(folders.DataError, match="not an idx file of unsigned bytes"):
        folders.read_idx(write_idx(tmp_path / "floats.gz", np.zeros((2, 2)), magic_type=0x0D))
    path = write_idx(tmp_path / "short.gz", np.zeros((4, 28, 28)))
    import gzip

    raw = gzip.decompress(path.read_bytes())
    (tmp_path / "short").write_bytes(raw[:-100])
    with pytest.raises(folders.DataError, match=r"bytes of data for the shape \(4, 28, 28\)"):
        folders.read_idx(tmp_path / "short")


def test_without_the_package_and_offline_fashion_mnist_names_what_to_install(
    tmp_path, monkeypatch
):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens: offline
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(folders.DataError, match="apt-get install dataset-fashion-mnist"):
        folders.prepare_public_dataset("fashion_mnist", tmp_path / "d", source=tmp_path / "none")
    assert not (tmp_path / "d" / "train").exists()


def test_the_installed_debian_package_reads_whole():
    if not (folders.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(
            "dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)"
        )
    import numpy as np

    images = folders.read_idx(folders.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = folders.read_idx(folders.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
