"""Retrain jobs: queue one (the retrain notebook in its own process), follow it, list them."""

from __future__ import annotations

from flask_smorest import Blueprint, abort

from imgclf import jobs, registry
from imgclf.store import JobConflict
from serve import errors, schemas, state
from serve.auth import ADMIN, require_token

blueprint = Blueprint("retrain", __name__, description="Retrain jobs")


@blueprint.route("/retrain", methods=["POST"])
@require_token
@blueprint.arguments(schemas.RetrainParameters, required=False)
@blueprint.doc(security=ADMIN)
@blueprint.response(202, schemas.Job)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(409, description="a retrain job is already queued or running")
def retrain(parameters):
    """Start a retrain job (the retrain notebook, in its own process); answers its id."""
    settings = state.current().settings
    if registry.current_version(settings.models_dir) is None:
        abort(409, message="there is no current model to retrain: run `make train` first")
    try:
        job = jobs.queue_retrain(state.current().store, settings, dict(parameters or {}))
    except JobConflict as conflict:
        return errors.json_error(409, str(conflict), job=jobs.describe(conflict.job, log_lines=0))
    return jobs.describe(job, log_lines=0), 202, {"Location": f"/retrain/{job['id']}"}


@blueprint.route("/retrain/<job_id>")
@blueprint.response(200, schemas.Job)
@blueprint.alt_response(404, description="no such job")
def retrain_status(job_id):
    """A job's state, progress, log tail, report link and the gate's scores."""
    job = state.current().store.job(job_id)
    if job is None:
        abort(404, message=f"no retrain job {job_id!r}")
    return jobs.describe(job)


@blueprint.route("/jobs")
@blueprint.response(200, schemas.Job(many=True))
def list_jobs():
    """The latest jobs, newest first."""
    return [jobs.describe(job, log_lines=0) for job in state.current().store.jobs()]
