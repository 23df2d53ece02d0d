"""``make bench-train``: how fast the project decodes and trains, and how much memory it takes.

Generates a data set of ``BENCH_IMAGES`` RGB images of mixed sizes in 10 classes (or takes
``BENCH_DATA``, a folder with ``train/``), then measures, each training run in its own process
so that its peak resident memory is its own:

- decoding into the cache (``imgclf.data.cache``, a pool of processes), images/s;
- training images/s per epoch after the first (compiling) epoch, with and without
  augmentation, and each run's peak resident memory;
- the same model's bare training step on one batch already in memory, repeated: the limit.

Writes ``reports/bench-train-<time>.json`` and puts the table into docs/benchmarks.md (between the
``bench-train`` markers). Settings: ``BENCH_IMAGES`` (20000), ``BENCH_SIZE`` (64 px),
``BENCH_EPOCHS`` (3), ``BENCH_BATCH`` (64), ``BENCH_DATA``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgclf.config import PROJECT_ROOT, get_settings
from imgclf.files import write_json_atomic, write_text_atomic

MARKERS = ("<!-- bench-train -->", "<!-- /bench-train -->")
#: The page every benchmark writes its table into (between its markers).
BENCHMARKS = PROJECT_ROOT / "docs" / "benchmarks.md"


def generate(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` RGB PNGs of 40 to 120 px in 10 classes (a shape and colour each, with noise)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % 10
        size = int(rng.integers(40, 121)), int(rng.integers(40, 121))
        background = tuple(int(v) for v in rng.integers(0, 80, 3))
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        colour = tuple(int(v) for v in (np.array([40, 90, 140]) + 11 * label) % 256)
        box = [size[0] * 0.2, size[1] * 0.2, size[0] * 0.8, size[1] * 0.8]
        [draw.ellipse, draw.rectangle][label % 2](box, fill=colour)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (size[1], size[0], 3))
        target = folder / "train" / f"class{label}" / f"{index:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target)
    return folder


def _environment() -> dict:
    import jax

    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "devices": len(jax.devices()),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    }


def decode_speed(data_dir: Path, size: int, cache_dir: Path) -> dict:
    from imgclf.data import cache, folders

    split = folders.discover(data_dir / "train")
    started = time.perf_counter()
    cached = cache.load(split, size, "rgb", cache_dir)
    seconds = time.perf_counter() - started
    return {
        "images": len(cached),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(cached) / seconds, 1),
        "cache_mib": round(cached.images.nbytes / 2**20, 1),
    }


def epoch_clock():
    """A Keras callback that records each epoch's duration in its ``times``."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.started)

    return EpochClock()


def training_run(data_dir: Path, size: int, epochs: int, batch: int, augment: bool) -> dict:
    """One training run in this process (``python -m devkit.bench_train run ...``)."""
    import resource

    from imgclf.data import cache, folders
    from imgclf.data.augment import Augmentation
    from imgclf.model import network, training

    network.set_seed(1)
    split = folders.discover(data_dir / "train")
    cached = cache.load(split, size, "rgb", data_dir / ".cache")
    model = network.compile_model(network.build_model(10, cached.images.shape[1:]))
    clock = epoch_clock()

    train_idx, val_idx = training.hold_out(cached.labels, 0.1, 1)
    params = network.TrainParams(epochs=epochs, batch_size=batch, patience=epochs)
    network.train(
        model,
        cached.images,
        cached.labels,
        train_idx,
        val_idx,
        params,
        augment=Augmentation(seed=1) if augment else None,
        seed=1,
        verbose=0,
        callbacks=[clock],
    )
    times = clock.times
    steady = times[1:] or times
    per_epoch = float(np.median(steady))
    return {
        "augmentation": augment,
        "epoch_s": [round(t, 2) for t in times],
        "steady_epoch_s": round(per_epoch, 2),
        "images_per_s": round(len(train_idx) / per_epoch, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def bare_step(size: int, batch: int, batches: int = 40) -> dict:
    """The model's training steps on batches already in memory (``model.fit`` on an array, no
    augmentation, no reading): the speed limit; the second epoch is timed."""

    from imgclf.model import network

    network.set_seed(1)
    model = network.compile_model(network.build_model(10, (size, size, 3)))
    x = np.random.default_rng(0).random((batch * batches, size, size, 3), dtype=np.float32)
    y = np.arange(len(x)) % 10
    clock = epoch_clock()

    model.fit(x, y, batch_size=batch, epochs=2, verbose=0, shuffle=False, callbacks=[clock])
    seconds = clock.times[-1] / batches
    return {"step_ms": round(seconds * 1000, 2), "images_per_s": round(batch / seconds, 1)}


def child(module: str, *args: str, env: dict | None = None) -> dict:
    """Run ``python -m module args`` (one measurement in a process of its own) and return the
    JSON its last line of output prints.

    Raises:
        RuntimeError: it failed (with the end of its stderr).
    """
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        check=False,
    )
    if result.returncode:
        raise RuntimeError(f"{module} {args[0]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(*args: str) -> dict:
    return child("devkit.bench_train", *args)


def table(record: dict) -> str:
    env, runs = record["environment"], record["training"]
    plain, augmented = runs["without_augmentation"], runs["with_augmentation"]
    ratio = augmented["steady_epoch_s"] / plain["steady_epoch_s"]
    lines = [
        f"`make bench-train`: {record['images']:,} generated RGB images (40-120 px) at "
        f"{record['size']} px, batch {record['batch']}, {record['epochs']} epochs; "
        f"{env['device']}, {env['cpu_cores']} cores; {record['date']}.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| decoding into the cache ({record['decode']['images']:,} images, pool of processes) "
        f"| {record['decode']['images_per_s']:,.0f} images/s ({record['decode']['cache_mib']} "
        "MiB of uint8) |",
        f"| training without augmentation (epochs after the first) | "
        f"{plain['images_per_s']:,.0f} images/s, {plain['steady_epoch_s']} s/epoch, peak "
        f"{plain['peak_rss_mib']:,.0f} MiB resident |",
        f"| training with augmentation | {augmented['images_per_s']:,.0f} images/s, "
        f"{augmented['steady_epoch_s']} s/epoch ({ratio:.2f}x), peak "
        f"{augmented['peak_rss_mib']:,.0f} MiB resident |",
        f"| bare training steps, batches already in memory (the limit) | "
        f"{record['bare_step']['images_per_s']:,.0f} images/s ({record['bare_step']['step_ms']} "
        "ms/step) |",
    ]
    return "\n".join(lines)


def update_page(text: str, markers: tuple[str, str] = MARKERS, page: Path = BENCHMARKS) -> bool:
    """Replace what lies between ``markers`` in ``page`` with ``text``; False if absent."""
    start, end = markers
    content = page.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        return False
    write_text_atomic(page, pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
    return True


def publish(
    name: str,
    record: dict,
    text: str,
    markers: tuple[str, str] = MARKERS,
    page: Path = BENCHMARKS,
) -> Path:
    """Write ``record`` to ``reports/<name>-<time>.json``, print ``text`` (the table) and put
    it into ``page`` (docs/benchmarks.md) between ``markers``; returns the report's path."""
    reports = get_settings().reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = write_json_atomic(reports / f"{name}-{stamp}.json", record)
    print(text)
    updated = update_page(text, markers, page)
    print(f"wrote {path}" + (f"; {page.relative_to(PROJECT_ROOT)} updated" if updated else ""))
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":  # a child: one measurement, printed as JSON
        _, what, data_dir, size, epochs, batch = argv
        if what == "bare":
            print(json.dumps(bare_step(int(size), int(batch))))
        else:
            print(
                json.dumps(
                    training_run(
                        Path(data_dir), int(size), int(epochs), int(batch), what == "augment"
                    )
                )
            )
        return 0
    images = int(os.environ.get("BENCH_IMAGES") or 20000)
    size = int(os.environ.get("BENCH_SIZE") or 64)
    epochs = int(os.environ.get("BENCH_EPOCHS") or 3)
    batch = int(os.environ.get("BENCH_BATCH") or 64)
    get_settings()  # a bad setting stops the run here, not after the measurements
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        data_dir = Path(os.environ.get("BENCH_DATA") or folder)
        if not os.environ.get("BENCH_DATA"):
            print(f"generating {images:,} images ...", flush=True)
            generate(data_dir, images)
        print("decoding into the cache ...", flush=True)
        decode = decode_speed(data_dir, size, data_dir / ".cache")
        print(json.dumps(decode), flush=True)
        training = {}
        for what, key in (("plain", "without_augmentation"), ("augment", "with_augmentation")):
            print(f"training ({key}) ...", flush=True)
            training[key] = _child("run", what, str(data_dir), str(size), str(epochs), str(batch))
            print(json.dumps(training[key]), flush=True)
        bare = _child("run", "bare", str(data_dir), str(size), str(epochs), str(batch))
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "images": decode["images"],
        "size": size,
        "epochs": epochs,
        "batch": batch,
        "environment": _environment(),
        "decode": decode,
        "training": training,
        "bare_step": bare,
    }
    publish("bench-train", record, table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
