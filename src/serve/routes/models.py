"""The model registry: the current version, every version, rollback and promotion by hand."""

from __future__ import annotations

from pathlib import Path

from flask_smorest import Blueprint, abort

from imgclf import config
from imgclf.model import registry
from serve import schemas, state
from serve.auth import ADMIN, require_token

blueprint = Blueprint("models", __name__, description="The model registry")


def report_link(settings: config.Settings, report: str | None) -> str | None:
    """The ``/reports/...`` address of a report file, if it lies in the reports folder."""
    if not report:
        return None
    try:
        relative = Path(report).resolve().relative_to(settings.reports_dir.resolve())
    except ValueError:
        return None
    return f"/reports/{relative.as_posix()}"


def _version_summary(settings: config.Settings, info: dict) -> dict:
    test = info.get("test_metrics", {})
    return {
        "version": info["version"],
        "created_at": info.get("created_at"),
        "parent_version": info.get("parent_version"),
        "class_names": info.get("class_names"),
        "accuracy": test.get("accuracy"),
        "f1_macro": test.get("f1_macro"),
        "train_size": info.get("train_size"),
        "uploads_used": info.get("uploads_used"),
        "gate": info.get("gate"),
        "report": report_link(settings, info.get("report")),
    }


@blueprint.route("/model")
@blueprint.response(200, schemas.ModelInfo)
@blueprint.alt_response(404, description="no model has been trained yet")
def current_model():
    """The current version's metadata and test metrics."""
    worker = state.current()
    models_dir = worker.settings.models_dir
    version = registry.current_version(models_dir)
    if version is None:
        abort(404, message="no model has been trained yet")
    info = registry.metadata(models_dir, version)
    predictor = worker.model.predictor
    return {
        **info,
        "report": report_link(worker.settings, info.get("report")),
        "served_by_this_worker": predictor.version if predictor else None,
    }


@blueprint.route("/models")
@blueprint.response(200, schemas.Versions)
def list_models():
    """Every version, oldest first, with its scores and the gate's decision."""
    settings = state.current().settings
    pointer = registry.pointer(settings.models_dir)
    return {
        "current": pointer.get("version"),
        "history": pointer.get("history", []),
        "versions": [
            _version_summary(settings, registry.metadata(settings.models_dir, version))
            for version in registry.list_versions(settings.models_dir)
        ],
    }


@blueprint.route("/model/rollback", methods=["POST"])
@require_token
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.Pointer)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(409, description="there is no earlier version to go back to")
@blueprint.alt_response(503, description="the database is unavailable")
def rollback():
    """Make the previously current version current again (in the database, then its mirror
    ``current.json``, which every API worker watches)."""
    try:
        worker = state.current()
        return worker.store.rollback_version(worker.settings.models_dir)
    except registry.RegistryError as error:
        abort(409, message=str(error))


@blueprint.route("/model/promote", methods=["POST"])
@require_token
@blueprint.arguments(schemas.Promote)
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.Pointer)
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no such version")
@blueprint.alt_response(503, description="the database is unavailable")
def promote(body):
    """Make a given version current (e.g. one the gate rejected, after a human look)."""
    try:
        worker = state.current()
        return worker.store.promote_version(worker.settings.models_dir, body["version"])
    except registry.RegistryError as error:
        abort(404, message=str(error))
