"""Prometheus metrics, aggregated across gunicorn workers (prometheus_client multiprocess mode).

Under gunicorn, ``serve/gunicorn_conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
imports prometheus_client, so every worker writes its samples to files there and ``/metrics``
sums them. Without it (the Flask test client, ``flask run``) the same metrics live in this
process only. Figures that belong to the service rather than a worker (uptime, the current
model version, retrain outcomes) are computed when scraped, from the registry and the database.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

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
UPLOADED = Counter(
    "imgclf_uploaded_images_total",
    "Uploaded images by outcome (accepted, duplicate, rejected).",
    ["outcome"],
    registry=None,
)
OWN_METRICS = (REQUESTS, PREDICT_LATENCY, PREDICTIONS, UPLOADED)


class ServiceCollector:
    """Service-wide gauges computed at scrape time."""

    def __init__(self, started_at: float, current_version, job_outcomes):
        self.started_at = started_at
        self.current_version = current_version
        self.job_outcomes = job_outcomes

    def collect(self):
        uptime = GaugeMetricFamily("imgclf_uptime_seconds", "Seconds since the service started.")
        uptime.add_metric([], time.time() - self.started_at)
        yield uptime
        model = GaugeMetricFamily(
            "imgclf_model_info", "The current model version (value 1).", labels=["version"]
        )
        version = self.current_version()
        if version:
            model.add_metric([version], 1)
        yield model
        jobs = GaugeMetricFamily(
            "imgclf_retrain_jobs", "Retrain jobs by state (outcome).", labels=["state"]
        )
        for state, count in sorted(self.job_outcomes().items()):
            jobs.add_metric([state], count)
        yield jobs


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


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
