"""Input drift: are production images still like the training images, as the model sees them?

Two views, each a statistical test with a verdict only above a minimum production sample:

- **Inputs.** Per feature (brightness and contrast of the model's input, width, height and
  aspect ratio of the file), a two-sample Kolmogorov-Smirnov test (SciPy) of the latest
  production inputs against (a sample of) the training images, computed the same way
  (``imagestats.brightness_contrast`` on ``preprocessing.load_image``'s output, the file
  header for sizes).
- **The model's view.** The mix of classes the model predicts in production against the mix
  it predicted on the test set (the confusion matrix's column sums in the model's metadata),
  by a chi-square test of homogeneity.

- **The model's features** (``featuredrift``): a classifier two-sample test of the features of
  the latest kept production images against the test images', with an effect-size floor.

Drift is called when any test's p-value is below ``DRIFT_P_VALUE`` divided by the number of
tests (Bonferroni: seven tests at once would otherwise cry wolf seven times as often); the
test on features also needs its AUC at ``featuredrift.AUC_FLOOR`` at least.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from scipy import stats

from imgclf.config import LoopSettings
from imgclf.data import folders, imagestats
from imgclf.loop import featuredrift
from imgclf.model import registry

FEATURES = ("brightness", "contrast", "width", "height", "aspect_ratio")
#: Training images sampled for the reference (seeded, so every process draws the same ones).
REFERENCE_SAMPLE = 2000


class DriftVerdict(StrEnum):
    """The drift report's verdict: the one list every reader compares against."""

    NOT_ENOUGH_DATA = "not-enough-data"  # fewer than DRIFT_MIN_SAMPLE production inputs
    NO_DRIFT = "no-drift"
    DRIFT = "drift"


@dataclass
class Reference:
    """The training side of the comparison, for one model version."""

    version: str | None
    features: dict[str, np.ndarray]
    test_class_counts: dict[str, int]
    made_at: float = field(default_factory=time.time)


def features_of(rows: list[dict]) -> dict[str, np.ndarray]:
    """Feature arrays from prediction-log rows (``brightness``, ``contrast``, ``width``,
    ``height``); rows missing a figure are left out of that feature."""
    found: dict[str, list[float]] = {name: [] for name in FEATURES}
    for row in rows:
        for name in ("brightness", "contrast", "width", "height"):
            if row.get(name) is not None:
                found[name].append(float(row[name]))
        if row.get("width") and row.get("height"):
            found["aspect_ratio"].append(row["width"] / row["height"])
    return {name: np.asarray(values, dtype=float) for name, values in found.items()}


def build_reference(data_dir: Path, models_dir: Path, limit: int = REFERENCE_SAMPLE) -> Reference:
    """Sample training images and compute their features as the prediction log does."""
    from imgclf.data.preprocessing import ImageDecodeError, decode

    version = registry.current_version(models_dir)
    info = registry.metadata(models_dir, version) if version else {}
    size = info.get("image_size", [32])[0]
    mode = info.get("color_mode", "grayscale")
    rows = []
    train_dir = data_dir / "train"
    if train_dir.is_dir():
        split = folders.discover(train_dir)
        chosen = sorted(np.random.default_rng(0).permutation(len(split.paths))[:limit])
        for index in chosen:
            path = split.paths[index]
            try:
                image = decode(path, size, mode)
            except (ImageDecodeError, OSError, ValueError):
                continue
            facts = {"width": image.width, "height": image.height}
            rows.append({**facts, **imagestats.brightness_contrast(image.array)})
    matrix = np.asarray(info.get("test_metrics", {}).get("confusion_matrix", []))
    names = info.get("class_names", [])
    counts = (
        dict(zip(names, matrix.sum(axis=0).astype(int).tolist(), strict=False))
        if matrix.size
        else {}
    )
    return Reference(version, features_of(rows), counts)


class ReferenceCache:
    """The reference for the current model, rebuilt when the model changes (or after
    ``max_age_s``, for new training images); safe to share between threads."""

    def __init__(self, data_dir: Path, models_dir: Path, max_age_s: float = 600.0):
        self.data_dir, self.models_dir, self.max_age_s = data_dir, models_dir, max_age_s
        self._reference: Reference | None = None
        self._lock = threading.Lock()

    def get(self) -> Reference:
        with self._lock:
            version = registry.current_version(self.models_dir)
            cached = self._reference
            if (
                cached is None
                or cached.version != version
                or (time.time() - cached.made_at > self.max_age_s)
            ):
                self._reference = build_reference(self.data_dir, self.models_dir)
            return self._reference


def _feature_test(train: np.ndarray, production: np.ndarray) -> dict:
    result = {
        "train_count": int(len(train)),
        "production_count": int(len(production)),
        "train_mean": float(train.mean()) if len(train) else None,
        "production_mean": float(production.mean()) if len(production) else None,
        "statistic": None,
        "p_value": None,
    }
    if len(train) and len(production):
        test = stats.ks_2samp(train, production)
        result.update(statistic=float(test.statistic), p_value=float(test.pvalue))
    return result


def _class_mix_test(reference: dict[str, int], production: dict[str, int]) -> dict:
    names = sorted(set(reference) | set(production))
    table = np.asarray(
        [[reference.get(n, 0) for n in names], [production.get(n, 0) for n in names]], float
    )
    keep = table.sum(axis=0) > 0
    result = {
        "test_share": _shares(reference),
        "production_share": _shares(production),
        "statistic": None,
        "p_value": None,
    }
    if keep.sum() >= 2 and table[0].sum() and table[1].sum():
        test = stats.chi2_contingency(table[:, keep])
        result.update(statistic=float(test.statistic), p_value=float(test.pvalue))
    elif keep.sum() == 1 and table[0].sum() and table[1].sum():
        result.update(statistic=0.0, p_value=1.0)  # both predicted only the one class
    return result


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {name: round(n / total, 4) for name, n in sorted(counts.items())} if total else {}


def assess(
    reference: Reference, recent: list[dict], loop: LoopSettings, model_view: dict | None = None
) -> dict:
    """The drift figures and verdict for the latest production predictions (``recent``: rows
    of the prediction log, newest first, successful ones only).

    Returns:
        ``verdict`` (``not-enough-data``, ``no-drift`` or ``drift``), a ``message``, the
        ``features`` tests, the ``predicted_classes`` test, ``model_features`` (the test on
        the model's features, ``featuredrift``, when ``model_view`` holds one) and ``drifted``
        (the tests that called drift).
    """
    production = features_of(recent)
    count = len(recent)
    report = {
        "model_version": reference.version,
        "production_count": count,
        "min_sample": loop.drift_min_sample,
        "window": loop.drift_window,
        "p_value": loop.drift_p_value,
        "features": {
            name: _feature_test(reference.features.get(name, np.empty(0)), production[name])
            for name in FEATURES
        },
        "predicted_classes": _class_mix_test(
            reference.test_class_counts,
            _labels([row for row in recent if row.get("model_version") == reference.version]),
        ),
        "drifted": [],
        # distinct clients among these inputs (a keyed hash of their addresses): drift from
        # one or two clients may be their doing, not the world's (AUTO_RETRAIN_DRIFT_MIN_CLIENTS)
        "clients": len({row["client"] for row in recent if row.get("client")}),
    }
    tests = {**report["features"], "predicted_classes": report["predicted_classes"]}
    if model_view is not None:
        report["model_features"] = tests["model_features"] = dict(model_view)
    threshold = loop.drift_p_value / len(tests)
    report["threshold"] = threshold
    return _verdict(report, tests, threshold, count, loop)


def _verdict(report: dict, tests: dict, threshold: float, count: int, loop) -> dict:
    """``report`` with its ``verdict``, ``message`` and the tests that called drift."""
    if count < loop.drift_min_sample:
        report["verdict"] = DriftVerdict.NOT_ENOUGH_DATA.value
        report["message"] = (
            f"not enough production data yet: {count} prediction(s), a verdict needs at least "
            f"{loop.drift_min_sample} (DRIFT_MIN_SAMPLE)"
        )
        return report
    for name, test in tests.items():
        if name == "model_features":  # significant and large enough (an effect-size floor)
            test.update(featuredrift.judged(test, threshold, loop.drift_min_sample))
        else:
            test["drift"] = test["p_value"] is not None and test["p_value"] < threshold
        if test["drift"]:
            report["drifted"].append(name)
    if report["drifted"]:
        report["verdict"] = DriftVerdict.DRIFT.value
        report["message"] = (
            f"drift in {', '.join(report['drifted'])}: the latest {count} production inputs "
            f"differ from the training data (p < {threshold:.2g} each); expect worse accuracy, "
            "label some of them (the review queue) and retrain"
        )
    else:
        report["verdict"] = DriftVerdict.NO_DRIFT.value
        report["message"] = (
            f"no drift: the latest {count} production inputs are like the training data "
            f"(every p-value at least {threshold:.2g})"
        )
    return report


def _labels(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("label") is not None:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
    return counts


def check(cache: ReferenceCache, store, loop: LoopSettings) -> dict:
    """``assess`` the latest ``DRIFT_WINDOW`` successful predictions in the store, with the
    last test on the model's features (``featuredrift``) when it is recent and of this
    model."""
    reference = cache.get()
    model_view = featuredrift.read(cache.models_dir, reference.version, featuredrift.EVERY_S * 2)
    return assess(reference, store.recent_inputs(loop.drift_window), loop, model_view)
