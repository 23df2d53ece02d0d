"""``make bench-data``: how well the data audit finds what it looks for, on planted cases.

Near-duplicates and leaks (``imgclf.data.neardup``): on the digits (8 x 8 pixels) and on
Fashion-MNIST (28 x 28, Debian's ``dataset-fashion-mnist``), copies of test images are altered
as a user's would be (``ALTERATIONS``: resized and re-encoded as JPEG; the same after a crop of
1 or 2 pixels a side) and looked up among all the test images: the share found is the recall.
Altered copies of *training* images, which have no twin among the test images, are looked up
the same way: the share wrongly flagged is the false-flag rate. Both at every threshold of a
grid; the library's ``THRESHOLD`` must be the lowest one that flags at most 1 % of clean
images on both data sets (resized copies), else the bench exits 1 naming it.

The other rows of issue 31, each in its own module on a real model's features
(``bench_data_features``: EfficientNet-Lite0, ImageNet weights, 64 px): label noise
(``bench_data_labels``), drift on features (``bench_data_drift``), active learning
(``bench_data_active``) and the audit's cost (``bench_data_cost``). ``BENCH_DATA_PARTS`` (a
comma-separated subset of ``PARTS``) runs only some.

Writes ``reports/bench-data-<time>.json`` (every part run) and each part's table between its
markers in docs/benchmarks.md (``<!-- bench-data -->``, ``<!-- bench-data-labels -->``, ...).
Seeded. The near-duplicate rows take about a minute on 2 cores; the rest far longer on 2
shared cores (measured at load 4 to 8: features 8 minutes, only the first time, cached in
``reports/bench-data-features/``; label noise 4, drift 14, active learning 12, cost 5).
"""

from __future__ import annotations

import io
import os
import sys
import time
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from devkit import bench_data_active, bench_data_cost, bench_data_drift, bench_data_labels
from devkit import bench_data_features as shared
from devkit.bench_data_features import datasets
from devkit.bench_train import publish, update_page
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


#: the parts that use the model's features, their modules and doc markers
PARTS = {
    "labels": bench_data_labels,
    "drift": bench_data_drift,
    "active": bench_data_active,
    "cost": bench_data_cost,
}


def near_duplicates() -> dict:
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
    return {
        "threshold": neardup.THRESHOLD,
        "lowest_safe_threshold": min(safe) if safe else None,
        "datasets": rows,
    }


def chosen_parts() -> list[str]:
    wanted = os.environ.get("BENCH_DATA_PARTS") or ",".join(["neardup", *PARTS])
    parts = [part.strip() for part in wanted.split(",") if part.strip()]
    unknown = sorted(set(parts) - {"neardup", *PARTS})
    if unknown:
        raise SystemExit(
            f"BENCH_DATA_PARTS: unknown {unknown}; known: neardup, {', '.join(PARTS)}"
        )
    return parts


def feature_parts(parts: list[str], report: dict) -> None:
    """Run the parts on model features; each one's table goes to its markers."""
    if not any(part in PARTS for part in parts):
        return
    benches = shared.benches()
    report["features"] = {
        "model": f"{shared.BACKBONE}, ImageNet weights, {shared.SIZE} px, pooled (1,280)",
        "images": {
            name: {k: len(v) for k, v in b.features.items()} for name, b in benches.items()
        },
        "extracted_now": dict(shared.spent),
    }
    for part, module in PARTS.items():
        if part not in parts:
            continue
        started = time.perf_counter()
        report[part] = module.measure(benches)
        report[part]["seconds"] = round(time.perf_counter() - started, 1)
        text = module.table(report[part])
        print(text)
        markers = (f"<!-- bench-data-{part} -->", f"<!-- /bench-data-{part} -->")
        if not update_page(text, markers):
            print(f"docs/benchmarks.md has no {markers[0]} markers: its table is not written")


def main() -> int:
    parts = chosen_parts()
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": SEED,
        "parts": parts,
    }
    feature_parts(parts, report)
    if "neardup" in parts:
        report.update(near_duplicates())
        text = table(report)
    else:
        text = "(near-duplicate rows not run: BENCH_DATA_PARTS)"
    # without the near-duplicate rows, markers no page holds: the JSON only
    name = "bench-data" if "neardup" in parts else "bench-data-partial"
    publish("bench-data", report, text, (f"<!-- {name} -->", f"<!-- /{name} -->"))
    advise(report)
    if "neardup" in parts and report["lowest_safe_threshold"] != neardup.THRESHOLD:
        print(
            f"neardup.THRESHOLD is {neardup.THRESHOLD}; the lowest threshold that flags at most "
            f"{MAX_FALSE_FLAGS:.0%} of clean images is {report['lowest_safe_threshold']}"
        )
        return 1
    return 0


def advise(report: dict) -> None:
    """Say where the measured best differs from the library's choice (not a failure: the
    goals are reported, and the library's owners choose)."""
    if "labels" in report:
        best = report["labels"]["best"]
        if best["best"] != report["labels"]["filter"]:
            print(
                f"label noise: {best['best']} comes closer to the goal than labelcheck.FILTER "
                f"({report['labels']['filter']}): {best['by_rule']}"
            )
    if "drift" in report:
        floor = report["drift"]["floors"]["best"]
        used = report["drift"]["auc_floor"]
        if floor != str(used):
            print(f"drift: the best AUC floor measured is {floor}, not featuredrift's {used}")


if __name__ == "__main__":
    sys.exit(main())
