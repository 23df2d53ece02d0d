"""Prometheus metrics, aggregated across gunicorn workers (prometheus_client multiprocess mode).

Under gunicorn, ``serve/gunicorn_conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
imports prometheus_client, so every worker writes its samples to files there and ``/metrics``
sums them. Without it (the Flask test client, ``flask run``) the same metrics live in this
process only. Figures that belong to the service rather than a worker (uptime, the current
model version, retrain outcomes) are computed when scraped, from the registry and the database.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from imgclf.config import get_server_settings
from imgclf.loop.drift import DriftVerdict
from imgclf.model import registry
from imgclf.store.jobstates import FINAL_STATES, JobState

#: The method label's values: a made-up method counts as "other" (one label, not one each).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUESTS = Counter(
    "imgclf_http_requests_total",
    "HTTP requests by route, method and status code.",
    ["route", "method", "status"],
    registry=None,
)
PREDICT_LATENCY = Histogram(
    "imgclf_predict_latency_seconds",
    "Time to answer a prediction request (decoding, inference, logging).",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    registry=None,
)
PREDICTIONS = Counter(
    "imgclf_predictions_total",
    "Images classified, by predicted class and model version.",
    ["label", "model_version"],
    registry=None,
)
UNKNOWN = Counter(
    "imgclf_unknown_predictions_total",
    "Images answered unknown (unlike every class the model knows), by model version; "
    "against imgclf_predictions_total, the unknown rate (a drift signal).",
    ["model_version"],
    registry=None,
)
UPLOADED = Counter(
    "imgclf_uploaded_images_total",
    "Uploaded images by outcome (accepted, duplicate, rejected).",
    ["outcome"],
    registry=None,
)
BATCH_IMAGES = Histogram(
    "imgclf_batch_images",
    "Images in one inference call of micro-batching (coalesced concurrent requests).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128),
    registry=None,
)
BATCH_QUEUE_WAIT = Histogram(
    "imgclf_batch_queue_wait_seconds",
    "Time a request's decoded images waited for their micro-batch's inference call to start.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    registry=None,
)
WORKERS_SERVING = Gauge(
    "imgclf_workers_serving",
    "Workers serving a model, by the runtime that computes its predictions (jax, openvino) and "
    "its version, summed over the live workers: a worker that fell back to JAX, or one still "
    "on the previous version, shows here whichever worker is scraped.",
    ["runtime", "version"],
    multiprocess_mode="livesum",
    registry=None,
)
OWN_METRICS = (
    WORKERS_SERVING,
    REQUESTS,
    PREDICT_LATENCY,
    PREDICTIONS,
    UNKNOWN,
    UPLOADED,
    BATCH_IMAGES,
    BATCH_QUEUE_WAIT,
)


def serving(before: tuple[str, str] | None, now: tuple[str, str]) -> tuple[str, str]:
    """Count this worker under ``now`` (runtime, version) in ``WORKERS_SERVING`` instead of
    ``before``; returns ``now``."""
    if before is not None and before != now:
        WORKERS_SERVING.labels(*before).set(0)
    WORKERS_SERVING.labels(*now).set(1)
    return now


class ServiceCollector:
    """Service-wide gauges computed at scrape time, from a ``serve.state.WorkerState``: uptime,
    the current model, whether this worker has loaded it, retrain jobs, and input drift."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        worker = self.worker
        uptime = GaugeMetricFamily("imgclf_uptime_seconds", "Seconds since the service started.")
        uptime.add_metric([], time.time() - worker.started_at)
        yield uptime
        model = GaugeMetricFamily(
            "imgclf_model_info", "The current model version (value 1).", labels=["version"]
        )
        version = registry.current_version(worker.settings.models_dir)
        if version:
            model.add_metric([version], 1)
        yield model
        loaded = GaugeMetricFamily(
            "imgclf_model_loaded", "1 when the scraped worker has a model loaded and serves it."
        )
        loaded.add_metric([], 1 if worker.model.loaded else 0)
        yield loaded
        served = GaugeMetricFamily(
            "imgclf_inference_runtime",
            "The runtime that computes the scraped worker's predictions (value 1): jax or "
            "openvino; requested is INFERENCE_RUNTIME.",
            labels=["runtime", "requested", "version"],
        )
        if worker.model.loaded:
            predictor = worker.model.loaded
            served.add_metric(
                [predictor.runtime, predictor.requested_runtime, predictor.version], 1
            )
        yield served
        yield from _job_metrics(worker.store)
        yield from _drift_metrics(worker.drift())


def _job_metrics(store):
    jobs = GaugeMetricFamily(
        "imgclf_retrain_jobs", "Retrain jobs by state (outcome).", labels=["state"]
    )
    for state, count in sorted(store.job_outcomes().items()):
        jobs.add_metric([state], count)
    yield jobs
    last = GaugeMetricFamily(
        "imgclf_retrain_last_failed", "1 when the latest finished retrain job failed."
    )
    finished = store.last_job("retrain", states=FINAL_STATES)
    last.add_metric([], 1 if finished and finished["state"] == JobState.FAILED else 0)
    yield last


def _drift_metrics(report: dict):
    detected = GaugeMetricFamily(
        "imgclf_drift_detected",
        "1 when production inputs drifted from the training data (GET /drift), 0 when not, "
        "-1 while there are too few production inputs for a verdict.",
    )
    verdict = report["verdict"]
    detected.add_metric([], {DriftVerdict.DRIFT: 1, DriftVerdict.NO_DRIFT: 0}.get(verdict, -1))
    yield detected
    sample = GaugeMetricFamily(
        "imgclf_drift_production_sample", "Production inputs the drift verdict is based on."
    )
    sample.add_metric([], report["production_count"])
    yield sample
    p_values = GaugeMetricFamily(
        "imgclf_drift_p_value",
        "p-value of each drift test (features: Kolmogorov-Smirnov; predicted_classes: "
        "chi-square).",
        labels=["test"],
    )
    tests = {**report["features"], "predicted_classes": report["predicted_classes"]}
    for name, test in tests.items():
        if test["p_value"] is not None:
            p_values.add_metric([name], test["p_value"])
    yield p_values


def multiprocess_dir() -> str | None:
    return get_server_settings().metrics_dir


def exposition(collector: ServiceCollector) -> tuple[bytes, str]:
    """Return the Prometheus text for all workers plus the service gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        for metric in OWN_METRICS:
            registry.register(metric)
    registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
