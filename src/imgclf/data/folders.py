"""Data sets laid out as class folders: discover, validate, fingerprint, prepare, merge uploads.

Layout: ``<data_dir>/train/<class>/<image>`` and ``<data_dir>/test/<class>/<image>``; uploaded
labelled images live in ``<data_dir>/uploads/<batch>/<class>/<image>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.config import IGNORED_FILE_NAMES, IMAGE_EXTENSIONS
from imgclf.data import manifest


class DataError(ValueError):
    """The data set is not usable; the message names the file or folder at fault."""


@dataclass
class Split:
    """The files of one split and their labels (indices into ``class_names``)."""

    root: Path
    class_names: list[str]
    paths: list[Path]
    labels: list[int]

    def counts(self) -> dict[str, int]:
        """Return the number of files per class name, in class order."""
        tally = Counter(self.labels)
        return {name: tally.get(index, 0) for index, name in enumerate(self.class_names)}


def _is_ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED_FILE_NAMES


def is_image_name(name: str) -> bool:
    """Return whether a file name has an accepted image ending (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(split_dir: Path) -> list[Path]:
    """Return the class folders of a split, sorted by name (hidden folders are ignored)."""
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not _is_ignored(p))


def _class_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or _is_ignored(path):
            continue
        if not is_image_name(path.name):
            raise DataError(
                f"{path}: not an image file (accepted endings: {', '.join(IMAGE_EXTENSIONS)}); "
                "move it out of the class folder"
            )
        files.append(path)
    return files


def discover(split_dir: str | Path, class_names: list[str] | None = None) -> Split:
    """List the images of one split and label them by folder.

    Args:
        split_dir: a folder with one sub-folder per class.
        class_names: the expected classes (e.g. the training classes when reading the test
            split); a folder not in the list is an error. Default: the folders found.

    Returns:
        The split, with class names sorted so that label indices are stable.

    Raises:
        DataError: the folder is missing, has fewer than two classes, has an empty class
            folder, holds a non-image file, or has a class not in ``class_names``.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder not found (expected <class>/<image> inside)")
    folders = class_folders(split_dir)
    names = [folder.name for folder in folders]
    if class_names is None:
        if len(names) < 2:
            raise DataError(
                f"{split_dir}: found {len(names)} class folder(s) {names}; "
                "a classifier needs at least two"
            )
        class_names = names
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise DataError(f"{split_dir}: class folder(s) {unknown} are not among {class_names}")
    paths, labels = [], []
    for folder in folders:
        files = _class_files(folder)
        if not files:
            raise DataError(f"{folder}: class folder is empty")
        paths.extend(files)
        labels.extend([class_names.index(folder.name)] * len(files))
    return Split(split_dir, list(class_names), paths, labels)


def fingerprint(files: Iterable[Path], root: Path) -> str:
    """Return a SHA-256 over the files' paths relative to ``root`` and their bytes.

    Renaming, moving, adding, removing or editing any file changes the fingerprint; the order
    in which the files are given does not.
    """
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def dataset_fingerprint(*splits: Split) -> str:
    """Return one fingerprint over all the files of the given splits (see ``fingerprint``)."""
    root = Path(os.path.commonpath([split.root.resolve() for split in splits]))
    return fingerprint([p.resolve() for split in splits for p in split.paths], root)


SPLITS = manifest.SPLITS


def discover_uploads(
    uploads_dir: Path, split: str | None = "train", classes: list[str] | None = None
) -> Split | None:
    """List uploaded images (``<uploads_dir>/<batch>/<class>/<image>``) as one split.

    Args:
        split: ``train`` or ``test``: only the images given to that share when they were
            uploaded (see ``uploads.store_upload``); None: all of them.
        classes: keep only these classes (e.g. the training classes, for the test share).

    Returns:
        The uploads labelled by class folder name (class names sorted), or None if there are
        none.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS} or None")
    if not uploads_dir.is_dir():
        return None
    by_class: dict[str, list[Path]] = {}
    for batch in sorted(p for p in uploads_dir.iterdir() if p.is_dir() and not _is_ignored(p)):
        splits = manifest.splits(batch)
        for folder in class_folders(batch):
            if classes is not None and folder.name not in classes:
                continue
            images = [
                p
                for p in sorted(folder.iterdir())
                if p.is_file()
                and is_image_name(p.name)
                and split in (None, splits.get(f"{folder.name}/{p.name}", "train"))
            ]
            by_class.setdefault(folder.name, []).extend(images)
    by_class = {name: files for name, files in by_class.items() if files}
    if not by_class:
        return None
    names = sorted(by_class)
    paths = [path for name in names for path in by_class[name]]
    labels = [names.index(name) for name in names for _ in by_class[name]]
    return Split(uploads_dir, names, paths, labels)


def share_images(data_dir: Path, share: str) -> tuple[list[Path], list[str]]:
    """Every image of a share (``train`` or ``test``): ``data_dir/<share>/`` and the uploads
    given to it, with their class names."""
    paths: list[Path] = []
    labels: list[str] = []
    parts = [discover(data_dir / share)] if (data_dir / share).is_dir() else []
    parts.append(discover_uploads(data_dir / "uploads", share))
    for part in parts:
        if part is not None:
            paths += part.paths
            labels += [part.class_names[i] for i in part.labels]
    return paths, labels


def merge_splits(base: Split, extra: Split | None) -> Split:
    """Return ``base`` plus ``extra``; classes new in ``extra`` are appended after base's.

    Appending (not re-sorting) keeps the label indices of the existing classes, so that a
    model's head can be widened for the new classes without remapping the old ones.
    """
    if extra is None:
        return base
    names = list(base.class_names) + [n for n in extra.class_names if n not in base.class_names]
    labels = list(base.labels) + [names.index(extra.class_names[i]) for i in extra.labels]
    return Split(base.root, names, list(base.paths) + list(extra.paths), labels)


def _write_split(root: Path, images, labels, ids, names: list[str], file_name: str) -> None:
    from PIL import Image

    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for pixels, label, number in zip(images, labels, ids, strict=True):
        Image.fromarray(pixels).save(root / names[int(label)] / file_name.format(number))


def _write_splits(data_dir: Path, file_name: str, names: list[str], **splits) -> bool:
    """Write ``splits`` (``train=(images, labels, ids)``, ``test=...``; uint8 images) as class
    folders named ``names``, each image as ``file_name.format(id)``, into a temporary folder
    renamed into place: ``data_dir/train`` and ``data_dir/test`` appear whole or not at all.

    Returns:
        True if written, False if both splits already existed (nothing done).

    Raises:
        DataError: only one of the two splits exists (a half-made or foreign data set).
    """
    train_dir, test_dir = data_dir / "train", data_dir / "test"
    if train_dir.exists() and test_dir.exists():
        return False
    if train_dir.exists() or test_dir.exists():
        raise DataError(f"{data_dir}: has only one of train/ and test/; remove it or complete it")
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=data_dir))
    try:
        for split, (images, labels, ids) in splits.items():
            _write_split(staging / split, images, labels, ids, names, file_name)
        os.rename(staging / "train", train_dir)
        os.rename(staging / "test", test_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def prepare_digits(data_dir: Path, test_size: float = 0.2, seed: int = 42) -> bool:
    """Write scikit-learn's bundled digits as PNG class folders (offline, stratified, seeded).

    Returns:
        True if the data was written, False if both splits already existed (nothing done).

    Raises:
        DataError: only one of the two splits exists (a half-made or foreign data set).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.uint8(np.round(digits.images / 16.0 * 255.0))
    train, test = train_test_split(
        np.arange(len(digits.target)),
        test_size=test_size,
        stratify=digits.target,
        random_state=seed,
    )
    return _write_splits(
        data_dir,
        "digit_{:04d}.png",
        [str(d) for d in range(10)],
        train=(pixels[train], digits.target[train], train),
        test=(pixels[test], digits.target[test], test),
    )


#: Where Debian's ``dataset-fashion-mnist`` package puts the four idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
IDX_TYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """An array from an idx file (gzipped or not): the MNIST family's format (magic: two zero
    bytes, the element type, the number of dimensions; big-endian sizes; the elements).

    Raises:
        DataError: not an idx file of unsigned bytes, or truncated.
    """
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an idx file of unsigned bytes")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{path}: {len(body)} bytes of data for the shape {shape}")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _fashion_mnist_offline(source: Path):
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    if not all((source / name).is_file() for pair in files.values() for name in pair):
        return None
    return {
        split: (read_idx(source / images), read_idx(source / labels))
        for split, (images, labels) in files.items()
    }


def _keras_download(name: str):
    import keras

    loader = {
        "mnist": keras.datasets.mnist,
        "fashion_mnist": keras.datasets.fashion_mnist,
        "cifar10": keras.datasets.cifar10,
    }[name]
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    return {"train": (x_train, np.ravel(y_train)), "test": (x_test, np.ravel(y_test))}


def prepare_public_dataset(
    name: str, data_dir: Path, limit: int | None = None, source: Path = FASHION_MNIST_DIR
) -> bool:
    """Write a public data set as class folders. Fashion-MNIST is read from Debian's
    ``dataset-fashion-mnist`` (``source``) when installed, offline; otherwise, and for the
    others, ``keras.datasets`` downloads it (needs the network).

    Args:
        name: ``"fashion_mnist"``, ``"mnist"`` or ``"cifar10"``.
        limit: keep the first this many images of each split (for a quick try, or few labels).

    Returns:
        True if written, False if ``data_dir`` already held both splits (nothing done).

    Raises:
        DataError: unknown name, or not installed and the download failed (the message says
            which package to install).
    """
    names = {
        "fashion_mnist": FASHION_MNIST_CLASSES,
        "mnist": [str(d) for d in range(10)],
        "cifar10": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
    }
    if name not in names:
        raise DataError(f"unknown data set {name!r}; expected one of {sorted(names)}")
    splits = _fashion_mnist_offline(source) if name == "fashion_mnist" else None
    if splits is None:
        try:
            splits = _keras_download(name)
        except Exception as error:
            hint = (
                "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                "to have it offline"
                if name == "fashion_mnist"
                else "this one needs the network"
            )
            raise DataError(
                f"could not download {name!r} ({type(error).__name__}: {error}); {hint}. The "
                "default data set (make data) works offline."
            ) from None
    kept = {
        split: (images[:limit], labels[:limit], range(len(images[:limit])))
        for split, (images, labels) in splits.items()
    }
    return _write_splits(data_dir, name + "_{:05d}.png", names[name], **kept)
