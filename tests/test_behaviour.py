"""Model behaviour: what a trained digit classifier must do beyond its test-set score.

Run on the session's small trained model (3 epochs, 16 px): a confident prediction survives a
one-pixel shift and a 10 % change of brightness, and every class is recognised on clean
examples of it. Thresholds leave room for a model this small, not for a broken one (an
untrained or label-shuffled model fails them).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageEnhance

from imgclf.data import folders
from imgclf.model.prediction import Predictor

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def predictor(trained_root) -> Predictor:
    return Predictor.load(trained_root / "models")


@pytest.fixture(scope="module")
def test_split(trained_root) -> folders.Split:
    return folders.discover(trained_root / "data" / "test")


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def variants(path) -> list[bytes]:
    """One-pixel shifts in four directions and brightness at 90 % and 110 %."""
    with Image.open(path) as original:
        image = original.convert("L")
    shifted = [ImageChops.offset(image, dx, dy) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    lit = [ImageEnhance.Brightness(image).enhance(factor) for factor in (0.9, 1.1)]
    return [encode(variant) for variant in shifted + lit]


def test_confident_predictions_survive_small_shifts_and_brightness_changes(predictor, test_split):
    """Margins, measured with seeds 1, 2 and 3: 48, 33 and 52 of 60 test images confident (at
    least 20 asked), and 93 %, 90 % and 95 % of their variants kept their label (at least 80 %
    asked: a one-pixel shift is 6 % of a 16-px input; 90 % was a coin toss for seed 2). An
    untrained model is confident on none."""
    paths = test_split.paths[::6]  # 60 images across every class
    originals = predictor.classify([path.read_bytes() for path in paths])
    confident = [
        (path, result.prediction.label)
        for path, result in zip(paths, originals, strict=True)
        if result.prediction.confidence >= 0.9
    ]
    assert len(confident) >= 20, "the model is confident on too few test images"
    kept, total = 0, 0
    for path, label in confident:
        results = predictor.classify(variants(path))
        kept += sum(result.prediction.label == label for result in results)
        total += len(results)
    print(f"{len(confident)} of {len(paths)} confident; {kept} of {total} variants kept")
    assert kept / total >= 0.8, f"only {kept} of {total} perturbed predictions kept their label"


def test_every_class_is_recognised_on_clean_examples(predictor, test_split):
    """Each class's recall on all its test images (about 36) is at least 0.8.

    Margin: the session model scores 0.975 to 0.981 test accuracy with seeds 1, 2 and 3 (about
    9 errors in 360), so a class under 0.8 would need 8 of them in its 36 images; an untrained
    model is near 0.1. (Asking 4 of a class's first 5 images hinged on one image: seed 3 failed.)
    """
    results = predictor.classify([path.read_bytes() for path in test_split.paths])
    labels = np.array(test_split.labels)
    answers = np.array([test_split.class_names.index(r.prediction.label) for r in results])
    for index, name in enumerate(test_split.class_names):
        recall = float(np.mean(answers[labels == index] == index))
        assert recall >= 0.8, f"class {name!r}: recall {recall:.3f} on clean test images"


def test_probabilities_are_a_distribution_over_the_model_classes(predictor, test_split):
    (result,) = predictor.classify([test_split.paths[0].read_bytes()])
    probabilities = np.array(list(result.prediction.probabilities.values()))
    assert list(result.prediction.probabilities) == predictor.class_names
    assert probabilities.min() >= 0 and probabilities.sum() == pytest.approx(1, abs=1e-4)
