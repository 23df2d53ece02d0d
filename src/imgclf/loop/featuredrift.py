"""Drift as the model sees it: a two-sample test on the served model's pooled features.

The strongest simple detector of data-set shift is a two-sample test on a model's
representations (Rabanser et al., 2019). Here it is a **classifier two-sample test**: the
features of the latest production images (the kept ones, ``loop.retention``: ``DRIFT_WINDOW``
newest) against those of the test images (``data/test`` and the uploads' test share, at most
``REFERENCE_SAMPLE``: images the model never trained on, as production images are). Half of
each side trains a logistic regression (standardised, ``PCA_DIMENSIONS`` principal
components, balanced classes) to tell production from reference; on the other half its scores
give the **AUC** (0.5: no difference) and, by the one-sided Mann-Whitney U test, a valid
p-value (the held-out half never met the classifier).

A large sample finds a trivial difference significant; drift is called only when the p-value
is significant **and** the AUC reaches ``AUC_FLOOR`` (the effect size). ``make bench-data``
measured no false alarm at any floor from 0.5 on in-distribution windows of 100 to 5,000
images (median AUC at most 0.504), and realistic shifts at an AUC of 0.55 to 0.56
(Fashion-MNIST: one class three times as frequent, 10 % digits mixed in) that a floor of 0.6
hid; 0.55 finds them at 5,000 images (95 % and 50 % of windows) and still keeps a trivial
difference in a large sample from alarming.

The API computes it (it holds the model) on ``GET /drift`` and writes it beside the models
(``FILE``); the worker, which never loads a model itself, runs it in a child process (``python
-m imgclf.loop.featuredrift``) every ``EVERY_S`` while retraining on drift is on;
``drift.assess`` counts it as one more test.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from imgclf.files import write_json_atomic
from imgclf.loop.retention import KEPT_FOLDER

FILE = ".drift-features.json"
REFERENCE_SAMPLE = 2000
PCA_DIMENSIONS = 16
#: The least AUC that is drift (see the module for what make bench-data measured)
AUC_FLOOR = 0.55
#: How old the written report may be before the worker computes it again
EVERY_S = 600.0


def two_sample(reference: np.ndarray, production: np.ndarray, seed: int = 0) -> dict:
    """The classifier two-sample test of ``production`` against ``reference`` features:
    ``{"auc", "p_value", "reference_count", "production_count"}`` (None figures when either
    side has fewer than 4 images)."""
    from scipy import stats
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    result = {
        "reference_count": len(reference),
        "production_count": len(production),
        "auc": None,
        "p_value": None,
    }
    if len(reference) < 4 or len(production) < 4:
        return result
    features = np.concatenate([reference, production]).astype(np.float64)
    sides = np.r_[np.zeros(len(reference), int), np.ones(len(production), int)]
    fit_x, held_x, fit_y, held_y = train_test_split(
        features, sides, test_size=0.5, stratify=sides, random_state=seed
    )
    dimensions = max(1, min(PCA_DIMENSIONS, features.shape[1], len(fit_x) - 1))
    classifier = make_pipeline(
        StandardScaler(),
        PCA(dimensions, random_state=seed),
        LogisticRegression(class_weight="balanced", max_iter=1000),
    ).fit(fit_x, fit_y)
    scores = classifier.decision_function(held_x)
    test = stats.mannwhitneyu(scores[held_y == 1], scores[held_y == 0], alternative="greater")
    auc = test.statistic / ((held_y == 1).sum() * (held_y == 0).sum())
    return {**result, "auc": round(float(auc), 4), "p_value": float(test.pvalue)}


def judged(test: dict, threshold: float, min_sample: int = 0) -> dict:
    """``test`` with ``drift``: on ``min_sample`` production images at least, significant at
    ``threshold`` and an AUC of ``AUC_FLOOR`` at least."""
    p, auc = test.get("p_value"), test.get("auc")
    enough = test.get("production_count", 0) >= min_sample
    drifted = enough and p is not None and auc is not None and p < threshold and auc >= AUC_FLOOR
    return {**test, "auc_floor": AUC_FLOOR, "drift": bool(drifted)}


#: The reference features of the last measurement: ``(model version, paths) -> features``
_last_reference: dict[tuple, np.ndarray] = {}
_measuring = threading.Lock()


def _images(predictor, paths: list[Path]) -> np.ndarray:
    from imgclf.data.preprocessing import ImageDecodeError, load_image

    arrays = []
    for path in paths:
        try:
            arrays.append(load_image(path, predictor.image_size, predictor.color_mode))
        except (ImageDecodeError, OSError):
            continue
    if not arrays:
        return np.zeros((0, 1), np.float32)
    return predictor.features(np.stack(arrays))


def recent_kept(folder: Path, limit: int) -> list[Path]:
    """The ``limit`` newest kept production images (``loop.retention``'s folder)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("??/*"):
        try:
            found.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    return [path for _, path in sorted(found, reverse=True)[:limit]]


def measure(predictor, data_dir: Path, kept_dir: Path, window: int) -> dict:
    """The test of the newest ``window`` kept images against a sample of the test images,
    with the model's version and when it was made."""
    from imgclf.data import folders

    paths = folders.share_images(data_dir, "test")[0]
    chosen = np.random.default_rng(0).permutation(len(paths))[:REFERENCE_SAMPLE]
    sample = tuple(paths[i] for i in sorted(chosen))
    key = (predictor.version, sample)
    if key not in _last_reference:  # the same model and test images: computed once
        _last_reference.clear()
        _last_reference[key] = _images(predictor, list(sample))
    reference = _last_reference[key]
    production = _images(predictor, recent_kept(kept_dir, window))
    test = two_sample(reference, production)
    return {**test, "model_version": predictor.version, "made_at": time.time()}


def write(models_dir: Path, report: dict) -> None:
    write_json_atomic(models_dir / FILE, report)


def refresh(predictor, data_dir: Path, models_dir: Path, window: int, every_s: float) -> None:
    """Measure and write again when the written test is older than ``every_s`` (or of another
    model); the API's ``GET /drift`` calls it with the model it serves. One measurement at a
    time in a process: a request that finds one running answers with the last written."""
    if predictor is None or read(models_dir, predictor.version, every_s) is not None:
        return
    if not _measuring.acquire(blocking=False):
        return
    try:
        write(models_dir, measure(predictor, data_dir, data_dir / KEPT_FOLDER, window))
    finally:
        _measuring.release()


def read(models_dir: Path, version: str | None, max_age_s: float) -> dict | None:
    """The last written test for model ``version``, if younger than ``max_age_s``."""
    try:
        report = json.loads((models_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    fresh = time.time() - report.get("made_at", 0) <= max_age_s
    return report if fresh and report.get("model_version") == version else None


_last_child = [-EVERY_S]


def refresh_in_child(settings) -> bool:
    """The worker's way (it loads no model): measure in a child process, without the
    secrets, when the written test is older than ``EVERY_S`` or of another model; returns
    whether a child ran and succeeded."""
    import subprocess

    from imgclf.config import environment_without_secrets
    from imgclf.model import registry

    version = registry.current_version(settings.models_dir)
    if version is None or read(settings.models_dir, version, EVERY_S) is not None:
        return False
    if time.monotonic() - _last_child[0] < EVERY_S:  # a failed child is not retried at once
        return False
    _last_child[0] = time.monotonic()
    environment = {**environment_without_secrets(), **settings.as_environment()}
    environment.pop("DATABASE_URL", None)
    child = subprocess.run(
        [sys.executable, "-m", "imgclf.loop.featuredrift"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    return child.returncode == 0


def main() -> int:
    """The worker's child: load the served model, measure, write (see the module)."""
    from imgclf.config import get_loop_settings, get_settings
    from imgclf.model import registry
    from imgclf.model.prediction import Predictor

    settings, loop = get_settings(), get_loop_settings()
    try:
        predictor = Predictor.load(settings.models_dir)
    except registry.RegistryError as error:
        print(f"no feature drift: {error}", file=sys.stderr)
        return 1
    kept = settings.data_dir / KEPT_FOLDER
    report = measure(predictor, settings.data_dir, kept, loop.drift_window)
    write(settings.models_dir, report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
