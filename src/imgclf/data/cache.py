"""Decoded images on disk: one uint8 NumPy array per split, read through a memory map.

Training, evaluation and retraining read batches from here instead of holding every decoded
image in memory: a run's resident memory no longer grows with the data set beyond the page
cache the operating system keeps for the file. A cache is keyed by the split's content
fingerprint, the image size, the colour mode and ``DECODER_VERSION``, built once (decoded by a
pool of processes through the one ``preprocessing.decode``) and reused by every later run.

Files: ``<cache_dir>/<key>.npy`` (``(n, height, width, channels)`` uint8) and ``<key>.json``
(labels, the files kept, the files skipped with the reason). Both are written under temporary
names and renamed, the JSON last: a cache without its JSON, with another decoder version, or
whose array does not match its JSON is rebuilt, never used. Before building, the free space is
checked; a full disk fails with a message naming the folder and the space needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from imgclf.data import folders
from imgclf.files import write_json_atomic

log = logging.getLogger(__name__)

#: Bump when ``preprocessing.decode`` changes what it produces: older caches are rebuilt.
DECODER_VERSION = 1
#: Below this many images, decoding in this process is faster than starting a pool.
POOL_THRESHOLD = 1000
CHUNK = 256
#: A temporary file of a build older than this was left by a process that died.
ABANDONED_AFTER_S = 3600.0


class CacheError(folders.DataError):
    """The cache cannot be built (e.g. no space); the message names the folder."""


class ImageFile:
    """Read-only rows of a cache's ``.npy`` file, read with ``os.pread`` when asked for.

    Behaves like the uint8 array for what training needs (``shape``, ``dtype``, ``len``,
    ``[i]``, ``[a:b]``, ``[indices]``, iteration, ``np.asarray``) without mapping the file:
    a memory map would count every page it touched (whole large folios, with random access
    most of the file within an epoch) in the process's resident memory.
    """

    def __init__(self, path: Path, rows: int | None = None):
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            readers = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            if version not in readers:
                raise ValueError(f"{path}: .npy format {version} is not supported")
            shape, fortran, dtype = readers[version](handle)
            self.offset = handle.tell()
        if fortran or dtype != np.uint8 or len(shape) != 4:
            raise ValueError(f"{path}: not a cache array (uint8, 4 dimensions)")
        if rows is not None and rows > shape[0]:
            raise ValueError(f"{path}: holds {shape[0]} rows, not {rows}")
        expected = self.offset + int(np.prod(shape))
        if path.stat().st_size < expected:
            raise ValueError(f"{path}: shorter than its header says (a partial write)")
        self.path = path
        self.shape = (shape[0] if rows is None else rows, *shape[1:])
        self.dtype = np.dtype(np.uint8)
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def _rows(self, start: int, stop: int) -> np.ndarray:
        count = max(0, stop - start)
        raw = os.pread(self._fd, count * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(raw, np.uint8).reshape(count, *self.shape[1:])

    def __getitem__(self, key):
        if key is Ellipsis or (isinstance(key, tuple) and (not key or key[0] is Ellipsis)):
            return np.asarray(self)[key]
        if isinstance(key, tuple):  # rows first, then numpy's indexing within them
            if any(isinstance(part, list | np.ndarray) for part in key[1:]):
                raise TypeError(
                    "index an image file's rows first (images[rows]), then the array it gives: "
                    "arrays after the first index are not supported"
                )
            rows = self[key[0]]
            if isinstance(key[0], int | np.integer):
                return rows[key[1:]]
            return rows[(slice(None), *key[1:])]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            rows = self._rows(start, stop)
            return rows if step == 1 else rows[::step]
        if isinstance(key, int | np.integer):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} of {len(self)}")
            return self._rows(index, index + 1)[0]
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)}")
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for row, index in enumerate(indices % max(len(self), 1)):
            out[row] = self._rows(int(index), int(index) + 1)[0]
        return out

    def __iter__(self):
        for start in range(0, len(self), 256):
            yield from self._rows(start, min(start + 256, len(self)))

    def __array__(self, dtype=None, copy=None):
        rows = self._rows(0, len(self))
        return rows.astype(dtype) if dtype is not None else rows


@dataclass
class CachedSplit:
    """A decoded split: ``images`` reads uint8 rows from the cache file (``ImageFile``); the
    model scales them."""

    images: ImageFile
    labels: np.ndarray
    paths: list[Path]
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    key: str = ""

    def __len__(self) -> int:
        return len(self.labels)


def _root(split: folders.Split) -> Path:
    """The folder all of a split's files are under (train/ and uploads/ for a merged split)."""
    if not split.paths:
        return split.root
    return Path(os.path.commonpath([str(p.parent) for p in split.paths]))


def cache_key(split: folders.Split, image_size: int, color_mode: str) -> str:
    """What a cache depends on: the files' content and labels, the input format, the decoder."""
    root = _root(split)
    digest = hashlib.sha256()
    digest.update(f"decoder {DECODER_VERSION} {image_size} {color_mode}\n".encode())
    digest.update(json.dumps(split.class_names).encode())
    names = [p.relative_to(root).as_posix() for p in split.paths]
    labelled = sorted(zip(names, (int(label) for label in split.labels), strict=True))
    digest.update(json.dumps(labelled).encode())
    digest.update(folders.fingerprint(split.paths, root).encode())
    return digest.hexdigest()[:32]


def _decode_chunk(args) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Decode some files into uint8 (a pool worker's task): kept indices, pixels, failures."""
    from imgclf.data.preprocessing import ImageDecodeError, decode

    indices, paths, image_size, color_mode = args
    kept, pixels, failed = [], [], []
    for index, path in zip(indices, paths, strict=True):
        try:
            image = decode(path, image_size, color_mode).array
        except ImageDecodeError as error:
            failed.append((index, str(error)))
            continue
        kept.append(index)
        pixels.append(np.rint(image * 255.0).astype(np.uint8))
    channels = 1 if color_mode == "grayscale" else 3
    stacked = np.stack(pixels) if pixels else np.zeros((0, image_size, image_size, channels))
    return kept, stacked.astype(np.uint8), failed


def _chunks(split: folders.Split, image_size: int, color_mode: str):
    for start in range(0, len(split.paths), CHUNK):
        indices = list(range(start, min(start + CHUNK, len(split.paths))))
        yield indices, [str(split.paths[i]) for i in indices], image_size, color_mode


def _workers(requested: int | None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(requested or cores or 1, cores or 1))


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CacheError(
            f"{folder}: not enough disk space for the decoded-image cache: it needs "
            f"{needed / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free (free some space, or "
            "point CACHE_DIR elsewhere)"
        )


def _read(folder: Path, key: str, split: folders.Split) -> CachedSplit | None:
    """The cache for ``key`` if it is complete and consistent, else None (it gets rebuilt)."""
    meta_path, array_path = folder / f"{key}.json", folder / f"{key}.npy"
    try:
        meta = json.loads(meta_path.read_text())
        rows, *shape = meta["shape"]
        images = ImageFile(array_path, rows)
        consistent = (
            meta.get("decoder") == DECODER_VERSION
            and list(images.shape[1:]) == shape
            and rows == len(meta["labels"]) == len(meta["paths"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        consistent = False
    if not consistent:
        if meta_path.exists() or array_path.exists():
            log.warning("the cache %s is incomplete, damaged or stale: rebuilding it", array_path)
        return None
    root = _root(split)
    return CachedSplit(
        images,  # reads the first ``rows`` rows: the ones after are unused (failed files)
        np.asarray(meta["labels"], dtype=np.int32),
        [root / p for p in meta["paths"]],
        list(split.class_names),
        [tuple(s) for s in meta["skipped"]],
        key,
    )


def _remove_abandoned(folder: Path, now: float) -> None:
    """Remove temporary files of builds killed midway (an hour old: none is still written)."""
    for path in folder.glob(".*-*.*"):
        try:
            if now - path.stat().st_mtime > ABANDONED_AFTER_S:
                path.unlink()
        except FileNotFoundError:
            continue


def _build(
    folder: Path,
    key: str,
    split: folders.Split,
    image_size: int,
    color_mode: str,
    workers: int | None,
) -> None:
    _remove_abandoned(folder, time.time())
    channels = 1 if color_mode == "grayscale" else 3
    count = len(split.paths)
    _check_space(folder, count * image_size * image_size * channels + 2**20)
    handle, partial = tempfile.mkstemp(prefix=f".{key}-", suffix=".npy", dir=folder)
    os.close(handle)
    kept_at: dict[int, int] = {}
    failures: dict[int, str] = {}
    try:
        out = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.uint8, shape=(count, image_size, image_size, channels)
        )
        tasks = list(_chunks(split, image_size, color_mode))
        pool_size = _workers(workers) if count >= POOL_THRESHOLD else 1
        if pool_size > 1:
            context = get_context("spawn")  # never fork a process that runs JAX
            with ProcessPoolExecutor(pool_size, mp_context=context) as pool:
                results = pool.map(_decode_chunk, tasks)
                _collect(results, out, kept_at, failures, count, split.root)
        else:
            _collect(map(_decode_chunk, tasks), out, kept_at, failures, count, split.root)
        if not kept_at:
            raise folders.DataError(f"{split.root}: none of the {count} images could be read")
        order = sorted(kept_at)  # compact: the kept images first, in the split's order
        if len(order) < count:
            for target, source in enumerate(order):
                out[target] = out[source]
        out.flush()
        del out
        os.replace(partial, folder / f"{key}.npy")
    except OSError as error:
        Path(partial).unlink(missing_ok=True)
        if error.errno == 28:  # ENOSPC
            raise CacheError(
                f"{folder}: the disk filled up while writing the decoded-image cache "
                f"({count * image_size * image_size * channels / 2**20:,.0f} MiB needed)"
            ) from None
        raise
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    root = _root(split)
    meta = {
        "decoder": DECODER_VERSION,
        "shape": [len(order), image_size, image_size, channels],
        "labels": [int(split.labels[i]) for i in order],
        "paths": [split.paths[i].relative_to(root).as_posix() for i in order],
        "skipped": [[str(split.paths[i]), failures[i]] for i in sorted(failures)],
        "class_names": list(split.class_names),
    }
    write_json_atomic(folder / f"{key}.json", meta)


def _collect(results, out, kept_at, failures, count, root) -> None:
    from tqdm import tqdm

    progress = tqdm(total=count, desc=f"decoding {root.name}", unit="img", disable=count < 2000)
    for kept, pixels, failed in results:
        for row, index in enumerate(kept):
            out[index] = pixels[row]
            kept_at[index] = index
        for index, reason in failed:
            failures[index] = reason
        progress.update(len(kept) + len(failed))
    progress.close()


def load(
    split: folders.Split,
    image_size: int,
    color_mode: str,
    cache_dir: Path,
    workers: int | None = None,
) -> CachedSplit:
    """The decoded split from the cache, building the cache first if it is missing or stale.

    Raises:
        folders.DataError: no image of the split could be decoded.
        CacheError: not enough disk space under ``cache_dir``.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(split, image_size, color_mode)
    cached = _read(cache_dir, key, split)
    if cached is None:
        log.info("decoding %d images of %s into the cache", len(split.paths), split.root)
        _build(cache_dir, key, split, image_size, color_mode, workers)
        cached = _read(cache_dir, key, split)
        if cached is None:
            raise CacheError(f"{cache_dir}: the cache {key} could not be read back after writing")
    return cached
