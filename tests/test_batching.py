"""Micro-batching (serve.batching): concurrent requests coalesced into one inference call, a lone
one not kept waiting, batches bounded, and one bad image or request never failing the others."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from imgclf.model.prediction import Predictor
from serve import metrics
from serve.batching import MicroBatcher

#: Long enough that a test's requests, all counted as arriving, always submit within it (they
#: are released together by a barrier), short enough to notice a batcher that waits it out.
PATIENT_MS = 5000


@pytest.fixture(scope="module")
def predictor(trained_root) -> Predictor:
    return Predictor.load(trained_root / "models", runtime="jax")


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, 16, 16, 1)).astype(np.float32)


def batch_figures() -> tuple[float, float, dict[str, float]]:
    """``(calls, images, buckets)`` of ``imgclf_batch_images`` so far (in-process metrics)."""
    samples = {
        (s.name, s.labels.get("le")): s.value for s in metrics.BATCH_IMAGES.collect()[0].samples
    }
    buckets = {le: v for (name, le), v in samples.items() if name.endswith("_bucket")}
    return (
        samples[("imgclf_batch_images_count", None)],
        samples[("imgclf_batch_images_sum", None)],
        buckets,
    )


def submit_together(batcher, predictor, parts: list[np.ndarray]) -> list:
    """Each part from its own thread: all counted as arriving, then submitted at once."""
    ready = threading.Barrier(len(parts))

    def one(part):
        with batcher.arriving() as arrival:
            ready.wait()
            try:
                return arrival.answers(predictor, part)
            except Exception as error:  # noqa: BLE001 - the test inspects it
                return error

    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        return list(pool.map(one, parts))


def test_requests_decoded_together_share_one_call(predictor):
    batcher = MicroBatcher(8, PATIENT_MS)
    parts = [images(1, seed) for seed in range(6)]
    calls, count, _ = batch_figures()
    answers = submit_together(batcher, predictor, parts)
    after_calls, after_count, _ = batch_figures()
    assert (after_calls - calls, after_count - count) == (1, 6)
    for part, (probabilities, _, scores) in zip(parts, answers, strict=True):
        alone, _, alone_scores = predictor.answers(part)
        assert np.abs(probabilities - alone).max() <= 1e-5 and len(probabilities) == 1
        assert np.abs(scores - alone_scores).max() <= 1e-4


def test_a_lone_request_is_computed_at_once(predictor):
    batcher = MicroBatcher(8, PATIENT_MS)
    predictor.answers(images(1, 0))  # compiled
    started = time.perf_counter()
    with batcher.arriving() as arrival:
        arrival.answers(predictor, images(1, 0))
    # nothing else was coming: no wait for the batch to fill (PATIENT_MS would be 5 s)
    assert time.perf_counter() - started < PATIENT_MS / 1000 / 5


def test_batches_hold_at_most_max_size_images(predictor):
    batcher = MicroBatcher(4, PATIENT_MS)
    parts = [images(1, seed) for seed in range(7)] + [images(3, 99)]
    calls, count, buckets = batch_figures()
    answers = submit_together(batcher, predictor, parts)
    after_calls, after_count, after_buckets = batch_figures()
    assert after_count - count == 10 and after_calls - calls >= 3  # 10 images, 4 a call
    assert after_buckets["4.0"] - buckets["4.0"] == after_calls - calls  # none over 4
    assert [len(a[0]) for a in answers] == [1] * 7 + [3]


def test_a_bad_image_or_a_failing_request_fails_only_itself(predictor, trained_root):
    batcher = MicroBatcher(8, PATIENT_MS)
    wrong = np.zeros((1, 16, 16, 3), np.float32)  # three channels: the coalesced call fails
    parts = [images(1, 1), wrong, images(2, 2)]
    answers = submit_together(batcher, predictor, parts)
    assert isinstance(answers[1], Exception)
    assert len(answers[0][0]) == 1 and len(answers[2][0]) == 2
    assert np.abs(answers[2][0] - predictor.answers(parts[2])[0]).max() <= 1e-5
    png = next((trained_root / "data" / "test").glob("*/*.png")).read_bytes()

    def classify(body: bytes):  # as the predict route does
        with batcher.arriving() as arrival:
            return predictor.classify([body], infer=lambda x: arrival.answers(predictor, x))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(classify, [png, b"not an image", png, b""]))
    assert [r[0].prediction is None for r in results] == [False, True, False, True]


def test_versions_are_never_mixed_in_one_call(predictor, trained_root):
    other = Predictor.load(trained_root / "models", runtime="jax")  # as after a hot reload
    batcher = MicroBatcher(8, PATIENT_MS)
    calls, _, _ = batch_figures()
    parts = [images(1, seed) for seed in range(4)]
    owners = [predictor, other, predictor, other]
    ready = threading.Barrier(4)

    def one(index):
        with batcher.arriving() as arrival:
            ready.wait()
            return arrival.answers(owners[index], parts[index])

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(one, range(4)))
    assert batch_figures()[0] - calls >= 2
    for index, answer in enumerate(answers):
        assert np.abs(answer[0] - owners[index].answers(parts[index])[0]).max() <= 1e-5


def test_by_default_jax_on_a_cpu_is_computed_side_by_side_not_batched(predictor):
    """BATCH_MAX_SIZE=auto: no coalescing for JAX on a CPU (``runtime.batch_limit``), so the
    requests run in their own threads at once, none waits for the others."""
    batcher = MicroBatcher(None, PATIENT_MS)
    assert batcher.limit(predictor) == 1
    calls, _, _ = batch_figures()
    answers = submit_together(batcher, predictor, [images(1, seed) for seed in range(4)])
    assert batch_figures()[0] == calls and all(len(a[0]) == 1 for a in answers)


class _Rendezvous:
    """A model that answers only when two requests are being computed at the same moment
    (a barrier): it shows that unbatched requests run side by side, not one after another."""

    runtime, threads = "jax", 1

    def __init__(self):
        self.meeting = threading.Barrier(2, timeout=20)

    def answers(self, images):
        self.meeting.wait()
        return np.ones((len(images), 2)), None, None


def test_unbatched_requests_are_computed_at_the_same_time():
    batcher = MicroBatcher(None, PATIENT_MS)
    model = _Rendezvous()
    answers = submit_together(batcher, model, [images(1, 0), images(1, 1)])
    assert all(not isinstance(a, Exception) for a in answers), answers  # none waited 20 s
