"""Adaptive micro-batching: one API worker's concurrent requests coalesced into one inference call.

Each request decodes its own images, in its own thread (in parallel, as before), then hands
them to the worker's ``MicroBatcher`` and waits. One thread runs the inference calls: it takes
the queued requests of the same model version, up to ``BATCH_MAX_SIZE`` images, computes them
in one call and hands each request its rows. ``BATCH_MAX_SIZE=auto`` (the default) batches
only where a batch is cheaper than its images one by one: accelerators, and OpenVINO with two
or more threads a worker (``imgclf.model.runtime.batch_limit`` says what was measured); other
requests are computed in their own threads, side by side, as without it.

A bad image never reaches the queue (its request answers its own 422), so it cannot fail the
others; should a coalesced call itself fail, each of its requests is computed alone, so only
the one that fails gets the error.

Adaptive: the first request of a batch waits for more only while other requests are being
decoded (they will arrive in a moment), and at most ``BATCH_MAX_WAIT_MS``. A lone request
(nothing computing, queued or being decoded) is computed at once in its own thread, so
batching adds nothing to its latency; one call computes at a time, and requests that arrive
while it runs form the next batch without any wait.

``imgclf_batch_images`` (images a call) and ``imgclf_batch_queue_wait_seconds`` (a request's
wait for its call) are its Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from imgclf.model import runtime
from serve import metrics


@dataclass(eq=False)
class _Request:
    predictor: object
    images: np.ndarray
    queued_at: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple | None = None
    error: BaseException | None = None


class Arrival:
    """A request on its way to the queue (``MicroBatcher.arriving``): counted as coming until
    it submits, or leaves without images."""

    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher
        self.pending = True

    def answers(self, predictor, images: np.ndarray) -> tuple:
        """``predictor.answers(images)``, computed in a coalesced call."""
        return self.batcher.answers(predictor, images, self)


class MicroBatcher:
    """Coalesces concurrent ``Predictor.answers`` calls of one worker (see the module)."""

    def __init__(self, max_size: int | None, max_wait_ms: float):
        self.setting = max_size  # None: per runtime (runtime.batch_limit)
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self._queue: deque[_Request] = deque()
        self._arriving = 0
        self._computing = 0  # inference calls in progress (at most one)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Count a request as coming while it decodes; use the ``Arrival`` to submit."""
        arrival = Arrival(self)
        with self._changed:
            self._arriving += 1
        try:
            yield arrival
        finally:
            if arrival.pending:
                with self._changed:
                    self._arriving -= 1
                    self._changed.notify()

    def answers(self, predictor, images: np.ndarray, arrival: Arrival | None = None) -> tuple:
        """Queue ``images`` for ``predictor`` and wait for their ``(probabilities, unknown,
        scores)``; raises what computing them raised. A model whose batch limit is 1 (JAX on
        a CPU, by default) is computed at once, in the calling thread."""
        request = _Request(predictor, images)
        alone = self.limit(predictor) <= 1
        with self._changed:
            if arrival is not None and arrival.pending:
                arrival.pending = False
                self._arriving -= 1
                self._changed.notify()
            # nothing computing, queued or coming: this request is its own batch, computed in
            # its own thread (no hand-over to the batch thread and back)
            first = not (alone or self._queue or self._arriving or self._computing)
            if first:
                self._computing += 1
            elif not alone:
                self._queue.append(request)
                self._changed.notify()
                if self._thread is None or not self._thread.is_alive():  # in the worker
                    self._thread = threading.Thread(
                        target=self._run, name="micro-batch", daemon=True
                    )
                    self._thread.start()
        if alone:  # outside the lock: such requests compute side by side
            return predictor.answers(images)
        if first:
            metrics.BATCH_QUEUE_WAIT.observe(0.0)
            metrics.BATCH_IMAGES.observe(len(images))
            try:
                return predictor.answers(images)
            finally:
                self._done_computing()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.answer

    def limit(self, predictor) -> int:
        """The most images a call holds for ``predictor`` (``runtime.batch_limit``)."""
        return runtime.batch_limit(self.setting, predictor.runtime, predictor.threads)

    def _next_batch(self) -> list[_Request]:
        """Wait for requests; return the next batch (same predictor, at most ``max_size``
        images, at least one request)."""
        with self._changed:
            while not self._queue or self._computing:  # one call at a time: others queue up
                self._changed.wait()
            deadline = self._queue[0].queued_at + self.max_wait_s
            most = self.limit(self._queue[0].predictor)
            while (
                self._arriving > 0
                and self._queued_images(self._queue[0].predictor) < most
                and (left := deadline - time.perf_counter()) > 0
            ):
                self._changed.wait(left)
            first = self._queue.popleft()
            batch, count, skipped = [first], len(first.images), []
            while self._queue and count < most:
                candidate = self._queue.popleft()
                if candidate.predictor is not first.predictor:
                    skipped.append(candidate)  # another version (a hot reload): a later batch
                elif count + len(candidate.images) > most:
                    self._queue.appendleft(candidate)
                    break
                else:
                    batch.append(candidate)
                    count += len(candidate.images)
            self._queue.extendleft(reversed(skipped))
            self._computing += 1
            return batch

    def _done_computing(self) -> None:
        with self._changed:
            self._computing -= 1
            self._changed.notify_all()

    def _queued_images(self, predictor) -> int:
        return sum(len(r.images) for r in self._queue if r.predictor is predictor)

    def _run(self) -> None:
        while True:
            batch: list[_Request] = []
            try:
                batch = self._next_batch()
                started = time.perf_counter()
                for request in batch:
                    metrics.BATCH_QUEUE_WAIT.observe(started - request.queued_at)
                metrics.BATCH_IMAGES.observe(sum(len(r.images) for r in batch))
                self._compute(batch)
            except Exception as error:  # never leave a request waiting, nor stop serving
                for request in batch:
                    if not request.done.is_set():
                        request.error = error
                        request.done.set()
            finally:
                if batch:
                    self._done_computing()

    @staticmethod
    def _compute(batch: list[_Request]) -> None:
        predictor = batch[0].predictor
        if len(batch) > 1:
            try:
                answer = predictor.answers(np.concatenate([r.images for r in batch]))
            except Exception:
                answer = None  # computed one by one below: only the failing request fails
            if answer is not None:
                start = 0
                for request in batch:
                    rows = slice(start, start + len(request.images))
                    request.answer = tuple(None if a is None else a[rows] for a in answer)
                    start = rows.stop
                    request.done.set()
                return
        for request in batch:
            try:
                request.answer = predictor.answers(request.images)
            except Exception as error:
                request.error = error
            request.done.set()
