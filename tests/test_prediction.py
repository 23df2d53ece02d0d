"""The serving predictor: per-image results, and safety under many threads (gunicorn gthread)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from imgclf.model.prediction import Predictor


@pytest.fixture(scope="module")
def predictor(trained_root) -> Predictor:
    return Predictor.load(trained_root / "models")


@pytest.fixture(scope="module")
def payloads(trained_root) -> list[bytes]:
    paths = sorted((trained_root / "data" / "test").glob("*/*.png"))[::9]
    return [path.read_bytes() for path in paths]


def test_classify_reports_a_bad_image_and_still_classifies_the_rest(predictor, payloads):
    results = predictor.classify([payloads[0], b"not an image", b"", payloads[1]])
    assert [r.prediction is None for r in results] == [False, True, True, False]
    assert "not a readable image" in results[1].error and "empty" in results[2].error
    assert results[0].facts["width"] == 8 and results[0].facts["format"] == "PNG"
    assert 0 <= results[0].facts["brightness"] <= 1 and results[1].facts == {}


def test_classify_from_many_threads_gives_the_same_answers_as_one(predictor, payloads):
    def labels(batch):
        return [
            (r.prediction.label, round(r.prediction.confidence, 5))
            for r in predictor.classify(batch)
        ]

    batches = [payloads[i : i + 3] for i in range(0, len(payloads), 3)] * 4
    expected = [labels(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(labels, batches))
    assert concurrent == expected
