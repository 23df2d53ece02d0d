"""Classify images: one (``/predict``) or many (``/predict/batch``), every answer logged."""

from __future__ import annotations

import contextlib
import hashlib
import http
import json
import time
import uuid
from copy import deepcopy
from functools import wraps

from flask import Response, g, request
from flask_smorest import Blueprint, abort
from marshmallow import fields

from imgclf.model.prediction import Classified, Predictor
from serve import metrics, schemas, state
from serve.auth import client_fingerprint, feedback_token

blueprint = Blueprint("predict", __name__, description="Classify images")
_EXPLAIN = schemas.ExplainQuery()
_TRUE, _FALSE = fields.Boolean.truthy, fields.Boolean.falsy


def _query_documented(view):
    """Document ``?explain`` (``schemas.ExplainQuery``) as ``blueprint.arguments`` does, without
    its parser on every request: ``_explain`` reads it."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        return view(*args, **kwargs)

    wrapper._apidoc = deepcopy(getattr(view, "_apidoc", {}))
    docs = wrapper._apidoc.setdefault("arguments", {})
    docs.setdefault("parameters", []).append({"in": "query", "required": True, "schema": _EXPLAIN})
    docs.setdefault("responses", {})[422] = http.HTTPStatus(422).name
    return wrapper


def _explain() -> bool:
    """``?explain``: a plain look at the query string when it is empty or one known value;
    anything else goes through the schema, which answers the same 422s as before."""
    query = request.args
    if not query:
        return False
    if len(query) == 1 and len(values := query.getlist("explain")) == 1:
        if values[0] in _TRUE:
            return True
        if values[0] in _FALSE:
            return False
    return blueprint.ARGUMENTS_PARSER.parse(_EXPLAIN, location="query")["explain"]


def _json(body: dict) -> Response:
    """The answer as Flask's ``jsonify`` writes it (sorted keys, compact), encoded once: no
    schema dump on the way (the schema documents it)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return Response(text + "\n", mimetype="application/json")


def _read_image_payload() -> tuple[str, bytes]:
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            abort(400, message="send the image in the multipart field 'image'")
        return upload.filename or "image", upload.read()
    if request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
        return "body", request.get_data()
    abort(
        415,
        message="send multipart/form-data with a field 'image', or the raw image "
        f"with Content-Type image/*; got {request.mimetype or 'no Content-Type'!r}",
    )


def _classify(
    predictor: Predictor, payloads: list[bytes], explain: bool = False
) -> tuple[list[dict], float]:
    """Classify, log every result (off the request path) and count it; returns the rows."""
    worker = state.current()
    batcher = worker.batcher
    # counted as arriving while it decodes, so that a batch waits for it (serve.batching)
    with batcher.arriving() if batcher else contextlib.nullcontext() as arrival:
        infer = (lambda images: arrival.answers(predictor, images)) if arrival else None
        results = predictor.classify(payloads, worker.service.predict_max_pixels, explain, infer)
    latency_ms = (time.perf_counter() - g.started) * 1000
    rows = [
        _row(predictor, result, payload, latency_ms)
        for result, payload in zip(results, payloads, strict=True)
    ]
    worker.log.add(rows)  # the store keeps its own columns, not the probabilities
    for row, payload in zip(rows, payloads, strict=True):
        if "error" not in row:  # kept a while, so that feedback can make it training data
            worker.keeper.keep(row["image_sha256"], payload, row.get("format") or "")
    for result in results:
        if result.prediction:
            metrics.PREDICTIONS.labels(result.prediction.label, predictor.version).inc()
            if result.prediction.unknown:
                metrics.UNKNOWN.labels(predictor.version).inc()
    return rows, latency_ms


def _row(predictor: Predictor, result: Classified, payload: bytes, latency_ms: float) -> dict:
    row = {
        "id": uuid.uuid4().hex,
        "created_at": time.time(),
        "model_version": predictor.version,
        "latency_ms": latency_ms,
        "image_sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "client": client_fingerprint(),
        **result.facts,
    }
    if result.prediction is None:
        return {**row, "error": result.error}
    prediction = result.prediction
    return {
        **row,
        "label": prediction.label,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "unknown": prediction.unknown,
        "unknown_score": prediction.unknown_score,
        **({"saliency": prediction.saliency} if prediction.saliency else {}),
    }


@blueprint.route("/predict", methods=["POST"])
@_query_documented
@blueprint.doc(requestBody=schemas.IMAGE_BODY)
@blueprint.response(200, schemas.Prediction)
@blueprint.alt_response(400, description="no image in the request")
@blueprint.alt_response(415, description="neither multipart/form-data nor image/*")
@blueprint.alt_response(422, description="not a readable image")
def predict_one():
    """Classify one image (multipart field `image`, or a raw `image/*` body); with
    `?explain=true`, also why (a heat map)."""
    explain = _explain()
    predictor = state.current().predictor()
    _, payload = _read_image_payload()
    (row,), latency_ms = _classify(predictor, [payload], explain)
    metrics.PREDICT_LATENCY.labels("predict").observe(latency_ms / 1000)
    if "error" in row:
        abort(422, message=row["error"])
    return _json(
        {
            "prediction_id": row["id"],
            "feedback_token": feedback_token(row["id"]),
            "label": row["label"],
            "confidence": row["confidence"],
            "probabilities": row["probabilities"],
            "unknown": row["unknown"],
            "unknown_score": row["unknown_score"],
            "model_version": predictor.version,
            "latency_ms": round(latency_ms, 3),
            **({"saliency": row["saliency"]} if "saliency" in row else {}),
        }
    )


@blueprint.route("/predict/batch", methods=["POST"])
@_query_documented
@blueprint.doc(requestBody=schemas.BATCH_BODY)
@blueprint.response(200, schemas.BatchPrediction)
@blueprint.alt_response(400, description="no images in the request")
@blueprint.alt_response(413, description="more images than the batch limit")
@blueprint.alt_response(422, description="no image was readable")
def predict_batch():
    """Classify many images (multipart field `images`, repeated); errors are per image. With
    `?explain=true` (at most 16 images), each prediction has its heat map."""
    explain = _explain()
    worker = state.current()
    predictor = worker.predictor()
    files = request.files.getlist("images") + request.files.getlist("image")
    if not files:
        abort(400, message="send the images as multipart fields named 'images'")
    if len(files) > worker.service.max_batch:
        abort(413, message=f"{len(files)} images in one batch; at most {worker.service.max_batch}")
    if explain and len(files) > schemas.EXPLAIN_MAX_BATCH:
        abort(
            413,
            message=f"{len(files)} images with explain=true; at most "
            f"{schemas.EXPLAIN_MAX_BATCH} (each needs a backward pass)",
        )
    names = [f.filename or "image" for f in files]
    rows, latency_ms = _classify(predictor, [f.read() for f in files], explain)
    metrics.PREDICT_LATENCY.labels("predict_batch").observe(latency_ms / 1000)
    failed = sum("error" in row for row in rows)
    if failed == len(rows):
        message = "; ".join(
            f"{name}: {row['error']}" for name, row in zip(names, rows, strict=True)
        )
        abort(422, message=message)
    keys = (
        "label",
        "confidence",
        "probabilities",
        "unknown",
        "unknown_score",
        "saliency",
        "error",
    )
    items = [
        {
            "prediction_id": row["id"],
            "feedback_token": feedback_token(row["id"]),
            "file": name,
            **{k: row[k] for k in keys if k in row},
        }
        for name, row in zip(names, rows, strict=True)
    ]
    return _json(
        {
            "model_version": predictor.version,
            "latency_ms": round(latency_ms, 3),
            "count": len(rows),
            "failed": failed,
            "predictions": items,
        }
    )
