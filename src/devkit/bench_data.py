"""``make bench-data``: how well the data audit finds what it looks for, on planted cases.

Near-duplicates and leaks (``imgclf.data.neardup``): on the digits (8 x 8 pixels) and on
Fashion-MNIST (28 x 28, Debian's ``dataset-fashion-mnist``), copies of test images are altered
as a user's would be (``ALTERATIONS``: resized and re-encoded as JPEG; the same after a crop of
1 or 2 pixels a side) and looked up among all the test images: the share found is the recall.
Altered copies of *training* images, which have no twin among the test images, are looked up
the same way: the share wrongly flagged is the false-flag rate. Both at every threshold of a
grid; the library's ``THRESHOLD`` must be the lowest one that flags at most 1 % of clean
images on both data sets (resized copies), else the bench exits 1 naming it.

Not measured yet (issue 31): label noise, drift on features, active learning, the audit's cost.

Writes ``reports/bench-data-<time>.json`` and the table between ``<!-- bench-data -->`` markers in
docs/benchmarks.md. Seeded; about a minute on 2 cores.
"""

from __future__ import annotations

import io
import sys
import time
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from devkit.bench_train import publish
from imgclf.data import neardup

SEED = 1
PLANTED = 300  # altered copies of test images, and as many of training images, per data set
GRID = (0.97, 0.98, 0.985, 0.9875, 0.99, 0.9925, 0.995)
#: How a copy is altered: resized and re-encoded (what the threshold is chosen on), and the
#: same after a crop of 1 or 2 pixels a side (images of 16 pixels or more)
ALTERATIONS = {"resized + JPEG": 0, "cropped 1-2 px, resized + JPEG": 2}
MAX_FALSE_FLAGS = 0.01
FIRST = next(iter(ALTERATIONS))


def altered(pixels: np.ndarray, rng: np.random.Generator, crop: int = 0) -> bytes:
    """One image as a user might re-upload it: cropped by 1 to ``crop`` pixels a side on
    images of 16 pixels or more, resized by 0.75 to 4 times (1 to 4 under 16 pixels), saved as
    JPEG at quality 60 to 90."""
    image = Image.fromarray(pixels)
    side = pixels.shape[0]
    if crop and side >= 16:
        left, top, right, bottom = rng.integers(1, crop + 1, 4)
        image = image.crop((left, top, side - right, side - bottom))
    scale = rng.uniform(0.75 if side >= 16 else 1.0, 4.0)  # 8 pixels shrunk are not the same
    size = max(4, round(image.width * scale)), max(4, round(image.height * scale))
    image = image.resize(size, Image.Resampling.BICUBIC).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(60, 91)))
    return buffer.getvalue()


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(training images, test images) of each data set, grey, uint8."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from imgclf.data import folders

    digits = load_digits()
    pixels = np.uint8(np.round(digits.images / 16.0 * 255.0))
    train, test = train_test_split(
        np.arange(len(pixels)), test_size=0.2, stratify=digits.target, random_state=42
    )
    found = {"digits": (pixels[train], pixels[test])}
    fashion = folders._fashion_mnist_offline(folders.FASHION_MNIST_DIR)
    if fashion is not None:
        found["fashion-mnist"] = (fashion["train"][0][:10_000], fashion["test"][0])
    else:
        print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): skipped")
    return found


def measure(name: str, train: np.ndarray, test: np.ndarray, rng, crop: int) -> dict:
    started = time.perf_counter()
    known = np.stack([neardup.fingerprint(Image.fromarray(p)) for p in test])
    indexing_s = time.perf_counter() - started
    twins = rng.choice(len(test), PLANTED, replace=False)
    strangers = rng.choice(len(train), PLANTED, replace=False)
    started = time.perf_counter()
    leaks = np.stack([neardup.fingerprint(altered(test[i], rng, crop)) for i in twins])
    clean = np.stack([neardup.fingerprint(altered(train[i], rng, crop)) for i in strangers])
    matches = {m.query: m for m in neardup.nearest(leaks, known)}
    lookup_s = time.perf_counter() - started
    found = np.array(
        [matches[i].similarity if matches[i].known == twins[i] else -1.0 for i in range(PLANTED)]
    )
    flagged = np.array([m.similarity for m in neardup.nearest(clean, known)])
    return {
        "dataset": name,
        "crop_px": crop if test.shape[1] >= 16 else 0,
        "image_side": int(test.shape[1]),
        "known_images": len(test),
        "planted": PLANTED,
        "by_threshold": [
            {
                "threshold": t,
                "recall": float(np.mean(found >= t)),
                "false_flags": float(np.mean(flagged >= t)),
            }
            for t in GRID
        ],
        "fingerprints_per_s": round(len(test) / indexing_s),
        "lookup_s": round(lookup_s, 2),
    }


def table(report: dict) -> str:
    lines = [
        "| data set (side) | copies | threshold | planted leaks found | clean images flagged |",
        "|---|---|---|---|---|",
    ]
    for row in report["datasets"]:
        if row["image_side"] < 16 and row["crop_px"] == 0 and row["alteration"] != FIRST:
            continue  # not cropped: the same row as above
        for cut in row["by_threshold"]:
            chosen = " **(used)**" if cut["threshold"] == report["threshold"] else ""
            lines.append(
                f"| {row['dataset']} ({row['image_side']} px) | {row['alteration']} | "
                f"{cut['threshold']}{chosen} | {cut['recall']:.3f} | {cut['false_flags']:.3f} |"
            )
    return "\n".join(lines)


def main() -> int:
    rows = []
    for alteration, crop in ALTERATIONS.items():
        for name, pair in datasets().items():
            row = measure(name, *pair, np.random.default_rng(SEED), crop)
            rows.append({"alteration": alteration, **row})
    safe = [
        t
        for t in GRID
        if all(
            cut["false_flags"] <= MAX_FALSE_FLAGS
            for row in rows
            if row["alteration"] == FIRST
            for cut in row["by_threshold"]
            if cut["threshold"] == t
        )
    ]
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": SEED,
        "threshold": neardup.THRESHOLD,
        "lowest_safe_threshold": min(safe) if safe else None,
        "datasets": rows,
    }
    publish("bench-data", report, table(report), ("<!-- bench-data -->", "<!-- /bench-data -->"))
    if report["lowest_safe_threshold"] != neardup.THRESHOLD:
        print(
            f"neardup.THRESHOLD is {neardup.THRESHOLD}; the lowest threshold that flags at most "
            f"{MAX_FALSE_FLAGS:.0%} of clean images is {report['lowest_safe_threshold']}"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
