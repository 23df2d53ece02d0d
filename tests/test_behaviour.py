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

from imgclf import data
from imgclf.prediction import Predictor

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def predictor(trained_root) -> Predictor:
    return Predictor.load(trained_root / "models")


@pytest.fixture(scope="module")
def test_split(trained_root) -> data.Split:
    return data.discover(trained_root / "data" / "test")


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
    assert kept / total >= 0.9, f"only {kept} of {total} perturbed predictions kept their label"


def test_every_class_is_recognised_on_clean_examples(predictor, test_split):
    for index, name in enumerate(test_split.class_names):
        examples = [
            p
            for p, label in zip(test_split.paths, test_split.labels, strict=True)
            if label == index
        ][:5]
        results = predictor.classify([path.read_bytes() for path in examples])
        correct = sum(result.prediction.label == name for result in results)
        assert correct >= 4, f"class {name!r}: {correct} of 5 clean examples right"


def test_probabilities_are_a_distribution_over_the_model_classes(predictor, test_split):
    (result,) = predictor.classify([test_split.paths[0].read_bytes()])
    probabilities = np.array(list(result.prediction.probabilities.values()))
    assert list(result.prediction.probabilities) == predictor.class_names
    assert probabilities.min() >= 0 and probabilities.sum() == pytest.approx(1, abs=1e-4)
