"""Retrain jobs: queue one (the retrain notebook in its own process), follow it, list them."""

from __future__ import annotations

import time

from flask_smorest import Blueprint, abort

from imgclf.loop import jobs
from imgclf.model import registry
from imgclf.store import FINAL_STATES, JobConflict, JobFinished, JobNotFound
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
        job = jobs.queue_retrain(
            state.current().store, settings, dict(parameters or {}), reason="started by request"
        )
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


#: How long a cancel request waits for a running job's worker to stop it.
CANCEL_WAIT_S = 10.0


@blueprint.route("/retrain/<job_id>/cancel", methods=["POST"])
@require_token
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.Job)
@blueprint.alt_response(202, schema=schemas.Job, description="still stopping; poll the job")
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no such job")
@blueprint.alt_response(409, description="the job has already ended")
def cancel(job_id):
    """Cancel a queued or running job: its kernel is stopped, nothing is registered."""
    store = state.current().store
    try:
        job = store.cancel_job(job_id)
    except JobNotFound as error:
        abort(404, message=str(error))
    except JobFinished as error:
        job = store.job(job_id)
        return errors.json_error(409, str(error), job=jobs.describe(job, log_lines=0))
    deadline = time.monotonic() + CANCEL_WAIT_S
    while job["state"] not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.25)
        job = store.job(job_id)
    return jobs.describe(job), 200 if job["state"] in FINAL_STATES else 202


@blueprint.route("/jobs")
@blueprint.response(200, schemas.Job(many=True))
def list_jobs():
    """The latest jobs, newest first."""
    return [jobs.describe(job, log_lines=0) for job in state.current().store.jobs()]
