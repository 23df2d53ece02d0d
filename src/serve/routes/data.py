"""Labelled data: bulk uploads, what the data holds, and feedback on predictions."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
from flask import request
from flask_smorest import Blueprint, abort

from imgclf.data import folders, uploads
from imgclf.data.preprocessing import ImageDecodeError, load_image
from imgclf.loop import labelcheck
from imgclf.loop.retention import ImageGone
from imgclf.loop.review import useful_order
from imgclf.model import registry
from imgclf.store import StoreError
from serve import curation_schemas, errors, metrics, schemas, state
from serve.auth import ADMIN, check_feedback_token, require_token, token_given
from serve.routes.uploadfiles import thumbnail_png

blueprint = Blueprint("data", __name__, description="Labelled data and feedback")
#: Least confident kept images that ``GET /review?order=useful`` chooses from
USEFUL_POOL = 200


def _uploaded_files(limits) -> list[tuple[str, str, bytes]]:
    """``(label, name, bytes)`` from a zip body, a ``zip`` field, or ``files`` + ``label``."""
    if request.mimetype == "application/zip":
        return uploads.read_zip(request.get_data(), limits)
    if request.mimetype != "multipart/form-data":
        abort(
            415,
            message="send multipart/form-data ('files' + 'label', or 'zip') or an "
            f"application/zip body; got {request.mimetype or 'no Content-Type'!r}",
        )
    if request.files.get("zip") is not None:
        if request.files.getlist("files"):
            abort(400, message="send either 'zip' or 'files' + 'label', not both")
        return uploads.read_zip(request.files["zip"].read(), limits)
    sent = request.files.getlist("files") or request.files.getlist("file")
    if not sent:
        abort(
            400,
            message="send images in the multipart field 'files' with a "
            "'label', or a zip of <class>/<image> in the field 'zip'",
        )
    label = uploads.validate_label(request.form.get("label"))
    return [(label, f.filename or "file", f.read()) for f in sent]


@blueprint.route("/upload-data", methods=["POST"])
@require_token
@blueprint.doc(requestBody=schemas.UPLOAD_BODY, security=ADMIN)
@blueprint.response(201, schemas.UploadResult)
@blueprint.alt_response(200, schema=schemas.UploadResult, description="nothing new")
@blueprint.alt_response(400, description="a hostile or malformed upload")
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(415, description="neither multipart/form-data nor application/zip")
@blueprint.alt_response(422, description="no file was a readable image")
def upload_data():
    """Bulk labelled images: many `files` with one `label`, or one `zip` of class folders."""
    worker = state.current()
    limits = worker.service.upload_limits
    try:
        files = _uploaded_files(limits)
        report = uploads.store_upload(
            files,
            worker.settings.uploads_dir,
            worker.hashes,
            limits,
            test_share=worker.loop.upload_test_share,
            min_test=worker.loop.min_test_images,
        )
    except uploads.UploadError as error:
        abort(400, message=str(error))
    result = report.as_dict()
    for outcome, count in result["counts"].items():
        metrics.UPLOADED.labels(outcome).inc(count)
    if report.batch:
        labelcheck.start(worker.model.loaded, worker.settings.data_dir, report.batch)
        return result, 201
    if not report.duplicates and not report.leaks:
        reasons = "; ".join(f"{r['file']}: {r['reason']}" for r in report.rejected)
        return errors.json_error(422, f"no image was accepted: {reasons}", **result)
    return result, 200


@blueprint.route("/data/summary")
@blueprint.response(200, schemas.DataSummary)
def data_summary():
    """Images per class: the training set and the uploads waiting for a retrain."""
    return uploads.class_counts(state.current().settings.data_dir)


@blueprint.route("/data/samples")
@blueprint.arguments(schemas.SamplesQuery, location="query")
@blueprint.response(200, schemas.Samples)
def data_samples(query):
    """A few training images per class, as PNG data URIs (`?per_class=4`)."""
    train_dir = state.current().settings.train_dir
    if not train_dir.is_dir():
        return {"samples": {}}
    split = folders.discover(train_dir)
    samples: dict[str, list[str]] = {}
    for path, label in zip(split.paths, split.labels, strict=True):
        name = split.class_names[label]
        if len(samples.setdefault(name, [])) < query["per_class"]:
            samples[name].append(_thumbnail(path))
    return {"samples": samples}


@blueprint.route("/data/brightness")
@blueprint.response(200, schemas.Brightness)
def brightness():
    """Brightness of training images against recent production inputs (histograms)."""
    worker = state.current()
    worker.log.flush()
    # the same sample of training images, measured the same way, as the drift tests use
    train = worker.references.get().features["brightness"].tolist()
    production = [
        row["brightness"] for row in worker.store.recent_inputs() if row["brightness"] is not None
    ]
    bins = np.linspace(0, 1, 21)
    return {
        "bins": bins.tolist(),
        "train": np.histogram(train, bins)[0].tolist(),
        "production": np.histogram(production, bins)[0].tolist(),
        "train_mean": float(np.mean(train)) if train else None,
        "production_mean": float(np.mean(production)) if production else None,
        "production_count": len(production),
    }


def _prediction(worker, prediction_id: str, wait_s: float = 1.0) -> dict:
    """The logged prediction, waiting up to ``wait_s`` for another worker's log (404 if none)."""
    worker.log.flush()
    deadline = time.time() + wait_s
    while True:
        found = worker.store.prediction(prediction_id)
        if found is not None:
            return found
        if time.time() > deadline:
            abort(404, message=f"no prediction with id {prediction_id!r}")
        time.sleep(0.1)


def _as_training_image(worker, prediction: dict, label: str) -> dict:
    """Store a prediction's kept image as a labelled upload (410 when it is not kept)."""
    try:
        payload = worker.keeper.read(prediction["image_sha256"] or "")
    except ImageGone as gone:
        abort(410, message=f"prediction {prediction['id']}: {gone}; the feedback was not stored")
    name = f"feedback-{prediction['id'][:12]}"
    report = uploads.store_upload(
        [(label, name, payload)],
        worker.settings.uploads_dir,
        worker.hashes,
        worker.service.upload_limits,
        test_share=worker.loop.upload_test_share,
        min_test=worker.loop.min_test_images,
    )
    result = report.as_dict()
    for outcome, count in result["counts"].items():
        metrics.UPLOADED.labels(outcome).inc(count)
    if report.rejected:
        abort(422, message=f"the kept image cannot be used: {report.rejected[0]['reason']}")
    row = (report.accepted or report.duplicates)[0]
    return {"status": "added" if report.accepted else "duplicate", "batch": report.batch, **row}


@blueprint.route("/feedback", methods=["POST"])
@blueprint.arguments(schemas.Feedback)
@blueprint.doc(security=[{}, *ADMIN])
@blueprint.response(201, schemas.FeedbackStored)
@blueprint.alt_response(401, description="a wrong admin token")
@blueprint.alt_response(404, description="no prediction with that id")
@blueprint.alt_response(409, description="the prediction failed: nothing to label")
@blueprint.alt_response(410, description="the prediction's image is no longer kept")
def feedback(body):
    """The true label of an earlier prediction (from its `prediction_id`), once.

    Needs the prediction's `feedback_token` (from `/predict`) or the admin token; a second
    feedback on a prediction is 409 unless the admin corrects it. Only the admin's feedback
    counts in the feedback accuracy.

    With the admin token, the prediction's kept image also becomes a labelled upload (same
    checks, deduplication and train/test split as `/upload-data`), used by the next retrain;
    `training` in the answer says where it went. Without it the label is only recorded.
    """
    worker = state.current()
    trusted = token_given()
    if not trusted:
        check_feedback_token(body["prediction_id"], body.get("feedback_token"))
    # a valid feedback token proves the id was issued here: wait a moment for another worker's
    # log; the admin's made-up id is looked up once and answers 404 at once
    prediction = _prediction(worker, body["prediction_id"], wait_s=0.0 if trusted else 2.0)
    if prediction.get("error"):
        abort(
            409,
            message=f"prediction {prediction['id']} failed ({prediction['error']}): "
            "there is no prediction to correct",
        )
    training = _as_training_image(worker, prediction, body["label"]) if trusted else None
    try:
        stored = worker.store.add_feedback(body["prediction_id"], body["label"], trusted)
    except StoreError as error:
        abort(409, message=str(error))
    if training is None:
        training = {
            "status": "not-used",
            "reason": "send the admin token to make the image training data",
        }
    return {**stored, "training": training}, 201


@blueprint.route("/review")
@require_token
@blueprint.arguments(curation_schemas.OrderedReviewQuery, location="query")
@blueprint.doc(security=ADMIN)
@blueprint.response(200, schemas.ReviewQueue)
@blueprint.alt_response(401, description="no or a wrong admin token")
def review(query):
    """Recent predictions whose image is kept and that have no feedback yet, with a thumbnail
    each and the current model's classes, for labelling: the least confident first, or with
    `order=useful` those most worth a label (the served model's smallest margins, spread over
    its features: `imgclf.loop.review`)."""
    worker = state.current()
    worker.log.flush()
    since = time.time() - worker.keeper.max_age_s
    limit, useful = query["limit"], query["order"] == "useful"
    pool = USEFUL_POOL if useful else limit * 4
    kept = []
    for row in worker.store.least_confident(since, limit=pool):
        if len(kept) == (pool if useful else limit):
            break
        try:
            kept.append((row, worker.keeper.read(row["image_sha256"] or "")))
        except ImageGone:
            continue
    predictor = worker.model.loaded
    if useful and predictor is not None and kept:
        kept = [kept[i] for i in _useful(predictor, [payload for _, payload in kept], limit)]
    keys = ("id", "created_at", "label", "confidence", "model_version")
    items = [
        {**{k: row[k] for k in keys}, "image": _thumbnail(io.BytesIO(payload))}
        for row, payload in kept[:limit]
    ]
    version = registry.current_version(worker.settings.models_dir)
    info = registry.metadata(worker.settings.models_dir, version) if version else {}
    return {"classes": info.get("class_names", []), "items": items}


def _useful(predictor, payloads: list[bytes], count: int) -> list[int]:
    """The order of ``payloads`` most worth a label (``imgclf.loop.review``); images that no
    longer decode go last."""
    images, decoded = [], []
    for index, payload in enumerate(payloads):
        try:
            images.append(load_image(payload, predictor.image_size, predictor.color_mode))
        except ImageDecodeError:
            continue
        decoded.append(index)
    if not images:
        return list(range(len(payloads)))
    batch = np.stack(images)
    chosen = useful_order(predictor.predict_images(batch), predictor.features(batch), count)
    first = [decoded[i] for i in chosen]
    return first + [i for i in range(len(payloads)) if i not in set(first)]


def _thumbnail(source: Path | io.BytesIO, size: int = 64) -> str:
    """A PNG thumbnail as a data URI (``uploadfiles.thumbnail_png``)."""
    return "data:image/png;base64," + base64.b64encode(thumbnail_png(source, size)).decode()
