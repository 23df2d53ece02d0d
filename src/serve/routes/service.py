"""Health, Prometheus metrics, production statistics and the pipeline's HTML reports."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import PurePosixPath

from flask import Response, send_from_directory
from flask_smorest import Blueprint, abort

from imgclf.loop import jobs
from imgclf.model import registry
from serve import metrics, schemas, state
from serve.auth import check_token

blueprint = Blueprint("service", __name__, description="Health, metrics and reports")


@blueprint.route("/health")
@blueprint.response(200, schemas.Health)
def health():
    """Status (never waits for a model load), uptime, the model version this worker serves, and
    whether the database takes the prediction log (``degraded`` while it does not: predictions
    are still answered and journaled)."""
    worker = state.current()
    predictor = worker.model.loaded
    if predictor:
        status = "ok"
    elif registry.current_version(worker.settings.models_dir) is None:
        status = "no-model"
    else:
        status = "loading"
    database = worker.database_status()
    if status == "ok" and database["database"] != "ok":
        status = "degraded"
    return {
        "status": status,
        **database,
        "uptime_s": round(time.time() - worker.started_at, 3),
        "started_at": datetime.fromtimestamp(worker.started_at, UTC).isoformat(),
        "model_version": predictor.version if predictor else None,
        "model_loaded_at": predictor.loaded_at if predictor else None,
        "model_error": worker.model.last_error,
        "runtime": predictor.runtime if predictor else None,
        "runtime_requested": worker.runtime.runtime,
        "runtime_note": predictor.runtime_note if predictor else None,
        "batching": {
            "setting": worker.runtime.batch_max_size or "auto",
            "max_size": worker.batcher.limit(predictor) if worker.batcher and predictor else 1,
            "max_wait_ms": worker.runtime.batch_max_wait_ms,
        },
        "worker_pid": os.getpid(),
    }


@blueprint.route("/ready")
@blueprint.response(200, schemas.Ready)
@blueprint.alt_response(503, description="not ready: a worker still loads or compiles the model")
def ready():
    """Whether this server answers every request at full speed (for load balancers and
    Kubernetes' readinessProbe): 200 once every worker has its model loaded, converted and
    every path compiled (one image, batches, explanations); 503 until then. With no model
    trained yet it is ready: every endpoint answers (`/predict` a 503 at once)."""
    worker = state.current()
    ready, why = worker.readiness()
    if not ready:
        abort(503, message=f"not ready: {why}")
    predictor = worker.model.loaded
    return {
        "status": why,
        "model_version": predictor.version if predictor else None,
        "runtime": predictor.runtime if predictor else None,
    }


@blueprint.route("/metrics")
@blueprint.doc(
    responses={"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}
)
def prometheus():
    """Prometheus metrics of all workers: requests, latency, predictions, model, jobs."""
    body, content_type = metrics.exposition(state.current().collector)
    return Response(body, content_type=content_type)


@blueprint.route("/stats")
@blueprint.response(200, schemas.Stats)
def stats():
    """The production figures as JSON (for the dashboard)."""
    worker = state.current()
    worker.log.flush()
    finished = [job for job in worker.store.jobs(20) if job["finished_at"]]
    return {
        **worker.store.statistics(),
        "uptime_s": round(time.time() - worker.started_at, 3),
        "model_version": registry.current_version(worker.settings.models_dir),
        "last_retrain": jobs.describe(finished[0], log_lines=0) if finished else None,
        "retrain_jobs": worker.store.job_outcomes(),
    }


@blueprint.route("/reports/")
@blueprint.route("/reports/<path:name>")
@blueprint.doc(
    responses={
        "200": {"description": "an HTML report or the index", "content": {"text/html": {}}},
        "404": {"description": "no such report"},
    }
)
def reports(name: str = "index.html"):
    """The pipeline's HTML reports, read-only. The index and each run's ``report.html`` (no
    code, no parameters cell, no log) are public; a run's executed notebook, log and JSON
    records show its parameters and log lines, so they need the admin token."""
    if not is_public_report(name):
        check_token()
    return send_from_directory(state.current().settings.reports_dir, name)


def is_public_report(name: str) -> bool:
    """The index, a run's HTML report, or a benchmark's figure: nothing with parameters."""
    return name in ("", "index.html") or PurePosixPath(name).name == "report.html"
