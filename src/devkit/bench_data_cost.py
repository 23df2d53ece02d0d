"""Cost rows of ``make bench-data``: seconds the audit takes on this machine (2 cores, shared:
the load average is recorded with the figures).

For a **1,000-image upload**: the model features of the upload (``bench_data_features.extract``,
the model already built), its label check as ``labelcheck.check_batch`` runs it (out-of-fold
probabilities of a reference of training images, a classifier fitted on them for the upload,
``labelcheck.probabilities_against``; then cleanlab), and its near-duplicate look-up
(``neardup.fingerprint`` of the 1,000 images, ``neardup.duplicates`` against the fingerprints
of the whole training set, whose fingerprinting is timed apart: the product keeps them).

For the **training set**: its features and ``labelcheck.issues_in`` on them (the scan's label
check). The digits' 1,437 training images are measured whole; of Fashion-MNIST's 60,000 the
bench's pool of 6,000 is measured (features timed on the 1,000 of the upload, scaled) and the
whole set extrapolated linearly (a lower bound: the classifier's fit grows at least linearly).
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from devkit.bench_data_features import Bench, extract, model, raw
from imgclf.data import neardup
from imgclf.loop import labelcheck

UPLOAD = 1000
SEED = 1


def timed(call, *args, **kwargs):
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return result, round(time.perf_counter() - started, 2)


def fingerprints(images: np.ndarray) -> np.ndarray:
    return np.stack([neardup.fingerprint(Image.fromarray(p)) for p in images])


def upload_check(reference, reference_y, upload, upload_y) -> None:
    """The upload's label check as ``labelcheck.check_batch`` does it, on features."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    own, theirs = labelcheck.probabilities_against(reference, reference_y, upload)
    labels = np.concatenate([reference_y, upload_y])
    probabilities = np.concatenate([own, theirs])
    find_label_issues(labels, probabilities, filter_by=labelcheck.FILTER)
    get_label_quality_scores(labels, probabilities)


def one(bench: Bench, train_images: np.ndarray) -> dict:
    pool, labels, features = bench.pool_x, bench.pool_y, bench.features["pool"]
    upload = min(UPLOAD, len(pool) // 2)
    _, build_s = timed(model, pool.shape[1])
    extract(pool[:upload])  # compiled for these batch shapes once, as a served model is
    _, features_s = timed(extract, pool[:upload])
    reference = slice(upload, upload + labelcheck.MAX_REFERENCE)
    _, check_s = timed(
        upload_check, features[reference], labels[reference], features[:upload], labels[:upload]
    )
    known, index_s = timed(fingerprints, train_images)
    queries, fingerprint_s = timed(fingerprints, pool[:upload])
    _, lookup_s = timed(neardup.duplicates, queries, known)
    whole = len(train_images)
    _, issues_s = timed(labelcheck.issues_in, features, labels, SEED)
    per_image = features_s / upload
    scale = whole / len(pool)
    return {
        "dataset": bench.name,
        "upload_images": upload,
        "model_build_s": build_s,
        "upload": {
            "features_s": features_s,
            "label_check_s": check_s,
            "label_check_reference": len(labels[reference]),
            "fingerprints_s": fingerprint_s,
            "duplicate_lookup_s": lookup_s,
            "total_s": round(features_s + check_s + fingerprint_s + lookup_s, 1),
        },
        "training_set": {
            "images": whole,
            "measured_images": len(pool),
            "features_s": round(per_image * len(pool), 1),
            "issues_in_s": issues_s,
            "fingerprint_index_s": index_s,
            "whole_set_s": round((per_image * len(pool) + issues_s) * scale + index_s, 1),
            "extrapolated": scale > 1,
        },
    }


def measure(benches: dict[str, Bench]) -> dict:
    data = raw()
    rows = [one(bench, data[bench.name][0]) for bench in benches.values()]
    return {"cores": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows}


def table(report: dict) -> str:
    lines = [
        "| data set | what | images | features (s) | label check (s) | near-duplicates (s) "
        "| total (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        up, whole = row["upload"], row["training_set"]
        lines.append(
            f"| {row['dataset']} | an upload | {row['upload_images']:,} | {up['features_s']} | "
            f"{up['label_check_s']} (against {up['label_check_reference']:,}) | "
            f"{up['fingerprints_s']} + {up['duplicate_lookup_s']} look-up | {up['total_s']} |"
        )
        note = " (extrapolated from the measured)" if whole["extrapolated"] else ""
        lines.append(
            f"| {row['dataset']} | training set, measured | {whole['measured_images']:,} | "
            f"{whole['features_s']} | {whole['issues_in_s']} | {whole['fingerprint_index_s']} "
            f"(index of {whole['images']:,}) | |"
        )
        lines.append(
            f"| {row['dataset']} | whole training set{note} | {whole['images']:,} | | | | "
            f"{whole['whole_set_s']} |"
        )
    load = ", ".join(f"{v:.1f}" for v in report["load_average"])
    lines.append("")
    lines.append(f"{report['cores']} cores; load average at the end {load} (shared machine).")
    return "\n".join(lines)
