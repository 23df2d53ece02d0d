"""Batches and devices: how training and inference feed images to the model.

``distribute`` chooses the devices (data-parallel over several accelerators, or one);
``Batches`` reads, shuffles, augments and pads training batches to a multiple of the devices,
one batch ahead in a thread; ``as_inputs`` is the one conversion from stored images (uint8 or
floats) to what the model takes.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import keras  # the backend is chosen by importing the package (imgclf/__init__.py)
import numpy as np

from imgclf.config import DISTRIBUTIONS


def distribute(mode: str = "auto") -> dict:
    """Choose how training uses the devices, before the model is built.

    ``auto``: data-parallel over the accelerators (GPUs, TPUs) when there are several, else
    one device; ``data_parallel``: over every device JAX has (CPUs too, e.g. with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2``); ``none``: one device. Data-parallel
    training uses Keras' distribution API (``keras.distribution.DataParallel``): each batch is
    split over the devices and the gradients are averaged.

    Returns:
        ``{"distribution": "data_parallel" or "none", "devices": [...], "count": n}``, for the
        notebook to show and the model's metadata to record.

    Raises:
        ValueError: an unknown mode.
    """
    import jax

    if mode not in DISTRIBUTIONS:
        raise ValueError(f"DISTRIBUTION={mode!r}: expected one of {', '.join(DISTRIBUTIONS)}")
    devices = jax.devices()
    accelerators = [d for d in devices if d.platform != "cpu"]
    chosen = accelerators if mode == "auto" else devices
    parallel = mode != "none" and len(chosen) > 1
    if parallel:
        names = [f"{d.platform}:{d.id}" for d in chosen]
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=names))
    else:
        chosen = devices[:1]
    return {
        "distribution": "data_parallel" if parallel else "none",
        "devices": [f"{d.platform}:{d.id} ({d.device_kind})" for d in chosen],
        "count": len(chosen),
    }


def device_multiple() -> int:
    """How many devices each batch is split over (1 unless a distribution is set)."""
    current = keras.distribution.distribution()
    return int(current.device_mesh.devices.size) if current is not None else 1


def as_inputs(images) -> np.ndarray:
    """Images as the model takes them: float32 in [0, 1] (uint8 ones are scaled)."""
    if images.dtype == np.uint8:
        return np.asarray(images, dtype=np.float32) / 255.0
    return np.asarray(images, dtype=np.float32)


class Batches(keras.utils.PyDataset):
    """Batches of ``images[indices]`` (uint8, e.g. a memory-mapped cache, or floats), read one
    batch ahead in a thread so that reading overlaps the training step.

    Training batches are shuffled every epoch and, with an ``augment`` function, augmented on
    the device by it (``augment.Augmentation``); the order and the random draws depend only on
    the seed, the epoch and the batch index. With ``multiple`` > 1 (data-parallel training over
    that many devices) every batch holds a multiple of it: the batch size is rounded down to
    one, and the few images of a last batch that would not divide evenly wait for the next
    epoch's shuffle.
    """

    def __init__(
        self,
        images,
        labels,
        indices,
        batch_size: int,
        augment=None,
        seed: int = 0,
        shuffle: bool = True,
        multiple: int | None = None,
    ):
        super().__init__()
        multiple = multiple or device_multiple()
        self.images, self.labels = images, np.asarray(labels)
        self.indices = np.asarray(indices)
        self.batch_size = max(multiple, batch_size - batch_size % multiple)
        self.augment, self.seed, self.shuffle, self.multiple = augment, seed, shuffle, multiple
        self.epoch = 0
        self._sizes = self._batch_sizes()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batches")
        self._ahead: tuple[tuple[int, int], Future] | None = None

    def _batch_sizes(self) -> list[int]:
        full, rest = divmod(len(self.indices), self.batch_size)
        rest -= rest % self.multiple
        return [self.batch_size] * full + ([rest] if rest else [])

    def __len__(self) -> int:
        return len(self._sizes)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, epoch]).permutation(self.indices)

    def _make(self, epoch: int, index: int):
        start = index * self.batch_size
        chosen = np.sort(self._order(epoch)[start : start + self._sizes[index]])
        images, labels = self.images[chosen], self.labels[chosen]
        if self.augment:
            return self.augment(images, epoch, index), labels
        return as_inputs(images), labels

    def __getitem__(self, index: int):
        if self._ahead and self._ahead[0] == (self.epoch, index):
            batch = self._ahead[1].result()
        else:
            batch = self._make(self.epoch, index)
        following = index + 1
        if following < len(self):
            future = self._pool.submit(self._make, self.epoch, following)
            self._ahead = ((self.epoch, following), future)
        return batch

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._ahead = None
