"""Curation of uploaded data (admin): list, delete a batch, delete or rename (merge) a class,
delete or relabel one image.

Every change is atomic (``imgclf.data.curation``) and recorded in the audit table
(``imgclf.store.audit``: who by token fingerprint and address, never the token). While a retrain
job is queued or running the uploads are its input, so changes are refused with 409 and the job.
"""

from __future__ import annotations

from collections.abc import Callable

from filelock import Timeout
from flask import Response, request
from flask_smorest import Blueprint, abort

from imgclf.data import audit as data_audit
from imgclf.data import curation, filecuration
from imgclf.loop import jobs, scan
from imgclf.model import registry
from imgclf.store import JobConflict, audit
from serve import curation_schemas as schemas
from serve import errors, state
from serve.auth import ADMIN, require_token

blueprint = Blueprint("uploads", __name__, description="Curation of uploaded data (admin)")
REFUSED = {curation.NotFound: 404, curation.InvalidName: 422, curation.Conflict: 409}


def _client() -> str:
    """The request's address, and X-Forwarded-For as sent when a proxy added it."""
    address = request.remote_addr or "unknown"
    forwarded = request.headers.get("X-Forwarded-For")
    return f"{address} (X-Forwarded-For: {forwarded})" if forwarded else address


def _retrain_conflict(worker) -> Response | None:
    """A 409 naming the job while a retrain is queued or running (it reads the uploads)."""
    job = worker.store.live_job(jobs.KIND)
    if job is None:
        return None
    message = (
        f"retrain job {job['id']} is {job['state']}: the uploads are its input, so they "
        f"cannot change until it ends; wait, or cancel it (POST /retrain/{job['id']}/cancel)"
    )
    return errors.json_error(409, message, job=jobs.describe(job, log_lines=0))


def _curate(operation: str, target: str, change: Callable[[], dict], new_name=None):
    """Run one curation under the audit: started, then done, refused or failed."""
    worker = state.current()
    conflict = _retrain_conflict(worker)
    if conflict is not None:
        return conflict
    log = audit.AuditLog(worker.store.engine)
    actor = audit.token_id(worker.service.admin_token)
    entry = log.start(operation, target, new_name, actor=actor, client=_client())
    try:
        result = change()
    except curation.CurationError as error:
        log.finish(entry, "refused", error=str(error))
        abort(REFUSED.get(type(error), 409), message=str(error))
    except Timeout:
        message = "the uploads are locked by another upload or curation; try again shortly"
        log.finish(entry, "failed", error=message)
        abort(503, message=message, headers={"Retry-After": "5"})
    except OSError as error:
        message = f"{operation} {target!r} failed ({error}); the uploads were left as they were"
        log.finish(entry, "failed", error=message)
        abort(500, message=message)
    log.finish(entry, "done", result)
    return {**result, "audit_id": entry}


@blueprint.route("/uploads")
@require_token
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.UploadInventory)
@blueprint.alt_response(401, description="no or a wrong admin token")
def inventory():
    """Uploaded classes and batches: images, when stored, how they split into train and test."""
    return curation.inventory(state.current().settings.uploads_dir)


@blueprint.route("/uploads/audit")
@require_token
@blueprint.arguments(schemas.AuditQuery, location="query")
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.AuditEntry(many=True))
@blueprint.alt_response(401, description="no or a wrong admin token")
def audit_trail(query):
    """The latest curation operations, newest first: what, when, by whom, how it ended."""
    return audit.AuditLog(state.current().store.engine).recent(query["limit"])


@blueprint.route("/uploads/batches/<batch_id>", methods=["DELETE"])
@require_token
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.CurationResult)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no such batch")
@blueprint.alt_response(409, description="a retrain job is queued or running")
def delete_batch(batch_id):
    """Delete one upload batch: its images and its manifest."""
    uploads_dir = state.current().settings.uploads_dir

    def delete() -> dict:
        result = curation.delete_batch(uploads_dir, batch_id)
        data_audit.forget(uploads_dir, batch_id)  # its findings name images that are gone
        return result

    return _curate("delete-batch", batch_id, delete)


@blueprint.route("/uploads/classes/<name>", methods=["DELETE"])
@require_token
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.CurationResult)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no uploaded class of that name")
@blueprint.alt_response(409, description="a retrain job is queued or running")
def delete_class(name):
    """Delete every uploaded image of a class, in every batch (a batch left empty goes too).

    The base data set (`train/`, `test/`) is never touched.
    """
    uploads_dir = state.current().settings.uploads_dir
    return _curate("delete-class", name, lambda: curation.delete_class(uploads_dir, name))


@blueprint.route("/uploads/classes/<name>", methods=["PATCH"])
@require_token
@blueprint.arguments(schemas.RenameClass)
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.CurationResult)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no uploaded class of that name")
@blueprint.alt_response(409, description="a retrain job is queued or running, or a file clash")
@blueprint.alt_response(422, description="the new name breaks the class-name rule")
def rename_class(body, name):
    """Rename an uploaded class; to an existing class's name, the images merge into it.

    Each image keeps its train/test share; the batches' manifests follow the moved files.
    """
    try:
        new_name = curation.check_name(body["name"])
    except curation.InvalidName as error:
        abort(422, message=str(error))
    uploads_dir = state.current().settings.uploads_dir
    return _curate(
        "rename-class",
        name,
        lambda: curation.rename_class(uploads_dir, name, new_name),
        new_name=new_name,
    )


@blueprint.route("/uploads/files/<path:stored_as>", methods=["DELETE"])
@require_token
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.CurationResult)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no uploaded image there")
@blueprint.alt_response(409, description="a retrain job is queued or running")
def delete_file(stored_as):
    """Delete one uploaded image (`stored_as` as `GET /data/issues` names it:
    `uploads/<batch>/<class>/<file>`) and its manifest row."""
    uploads_dir = state.current().settings.uploads_dir
    return _curate(
        "delete-file", stored_as, lambda: filecuration.delete_file(uploads_dir, stored_as)
    )


@blueprint.route("/uploads/files/<path:stored_as>", methods=["PATCH"])
@require_token
@blueprint.arguments(schemas.RelabelFile)
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.CurationResult)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no uploaded image there")
@blueprint.alt_response(409, description="a retrain job is queued or running, or a file clash")
@blueprint.alt_response(422, description="the label breaks the class-name rule or is unchanged")
def relabel_file(body, stored_as):
    """Give one uploaded image another label (for example a label issue's suggested label):
    it moves to `<batch>/<label>/` and keeps its train/test share."""
    uploads_dir = state.current().settings.uploads_dir
    label = body["label"]
    return _curate(
        "relabel-file",
        stored_as,
        lambda: filecuration.relabel_file(uploads_dir, stored_as, label),
        new_name=label,
    )


@blueprint.route("/data/issues")
@require_token
@blueprint.arguments(schemas.IssuesQuery, location="query")
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.DataIssues)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no audit of that batch")
def data_issues(query):
    """What the audit of the uploads found (``?batch=<id>``: one upload): leaks of test
    images, held out, and near-duplicates of training images or of each other."""
    worker = state.current()
    found = data_audit.read(worker.settings.uploads_dir, query.get("batch"))
    if found is None:
        abort(404, message=f"no audit of upload batch {query['batch']!r}")
    job = worker.store.live_job(scan.KIND)
    if job is not None:
        found["state"] = "running"
    return {**found, "scan": jobs.describe(job, log_lines=0) if job else None}


@blueprint.route("/data/issues/scan", methods=["POST"])
@require_token
@blueprint.doc(security=ADMIN)
@blueprint.response(202, schemas.ScanJob)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(409, description="a scan is queued or running, or no model is served")
def scan_data():
    """Audit all the data again with the served model's features, as a job of the worker:
    the labels of every upload and of the whole training set (out of fold), the outliers,
    and training images that nearly duplicate a test image. `GET /data/issues` shows
    `running` meanwhile, then what it found."""
    worker = state.current()
    if registry.current_version(worker.settings.models_dir) is None:
        abort(409, message="no model is served: the audit needs its features; train one first")
    try:
        job = scan.queue(worker.store, worker.settings)
    except JobConflict:
        job = worker.store.live_job(scan.KIND)
        message = f"a scan is already {job['state'] if job else 'running'}; wait for it"
        return errors.json_error(409, message, job=jobs.describe(job, 0) if job else None)
    return jobs.describe(job, log_lines=0), 202
