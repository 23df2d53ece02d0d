"""Request and response schemas (marshmallow); flask-smorest makes the OpenAPI document of them."""

from __future__ import annotations

from marshmallow import INCLUDE, RAISE, Schema, fields, post_dump, validate

from imgclf.data.uploads import LABEL_PATTERN, MAX_LABEL_LENGTH
from imgclf.loop.jobparams import RetrainParameters  # noqa: F401  (the one allow-list)
from imgclf.model.registry import VERSION_PATTERN
from imgclf.store.jobstates import JobState

_BINARY = {"type": "string", "format": "binary"}
IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": _BINARY},
                "required": ["image"],
            }
        },
        "image/*": {"schema": _BINARY},
        "application/octet-stream": {"schema": _BINARY},
    },
}
BATCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"images": {"type": "array", "items": _BINARY, "minItems": 1}},
                "required": ["images"],
            }
        }
    },
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {
                            "files": {"type": "array", "items": _BINARY, "minItems": 1},
                            "label": {
                                "type": "string",
                                "pattern": LABEL_PATTERN.pattern,
                                "maxLength": MAX_LABEL_LENGTH,
                                "description": "class of all the files",
                            },
                        },
                        "required": ["files", "label"],
                    },
                    {
                        "type": "object",
                        "properties": {
                            "zip": {**_BINARY, "description": "a zip of <class>/<image>"}
                        },
                        "required": ["zip"],
                    },
                ]
            }
        },
        "application/zip": {"schema": _BINARY},
    },
}


class StrictSchema(Schema):
    """Request bodies: an unknown field is an error, not silently ignored."""

    class Meta:
        unknown = RAISE


class OpenSchema(Schema):
    """Responses: the declared fields are documented; any others are passed through as well."""

    class Meta:
        unknown = INCLUDE  # so the OpenAPI document allows additional properties

    @post_dump(pass_original=True)
    def keep_the_rest(self, dumped, original, **kwargs):
        if isinstance(original, dict):
            return {**original, **dumped}
        return dumped


class Feedback(StrictSchema):
    prediction_id = fields.String(required=True, validate=validate.Length(1, 64))
    feedback_token = fields.String(
        validate=validate.Length(1, 64),
        metadata={"description": "from the prediction's answer; not needed with the admin token"},
    )
    label = fields.String(
        required=True,
        validate=[validate.Length(1, MAX_LABEL_LENGTH), validate.Regexp(LABEL_PATTERN)],
        metadata={"description": "the true class of the image"},
    )


class Promote(StrictSchema):
    version = fields.String(required=True, validate=validate.Regexp(VERSION_PATTERN))


#: Most images of one batch request that may ask for heat maps (one backward pass each).
EXPLAIN_MAX_BATCH = 16


class ExplainQuery(StrictSchema):
    explain = fields.Boolean(
        load_default=False,
        metadata={
            "description": "add `saliency` to each prediction: a base64 PNG heat map at the "
            "model's input size of the pixels that carried the answer (gradient x input); "
            f"batches of at most {EXPLAIN_MAX_BATCH} images"
        },
    )


class SamplesQuery(StrictSchema):
    per_class = fields.Integer(load_default=4, validate=validate.Range(1, 16))


class ClassScores(Schema):
    prediction_id = fields.String()
    feedback_token = fields.String(
        allow_none=True,
        metadata={"description": "send it with POST /feedback to label this prediction"},
    )
    label = fields.String()
    confidence = fields.Float()
    probabilities = fields.Dict(
        keys=fields.String(),
        values=fields.Float(),
        metadata={"description": "calibrated (temperature scaling fitted after training)"},
    )
    unknown = fields.Boolean(
        allow_none=True,
        metadata={
            "description": "the image is unlike every class the model knows (its features lie "
            "beyond the threshold set for UNKNOWN_FALSE_RATE); label and probabilities are "
            "still given. null: the model has no detector (registered before it existed)"
        },
    )
    unknown_score = fields.Float(
        allow_none=True,
        metadata={"description": "distance to the nearest class over the threshold (1.0 at it)"},
    )
    saliency = fields.String(
        metadata={"description": "with ?explain=true: a base64 PNG heat map (255: strongest)"}
    )


class Prediction(ClassScores):
    model_version = fields.String()
    latency_ms = fields.Float()


class BatchItem(ClassScores):
    file = fields.String()
    error = fields.String()


class BatchPrediction(Schema):
    model_version = fields.String()
    latency_ms = fields.Float()
    count = fields.Integer()
    failed = fields.Integer()
    predictions = fields.List(fields.Nested(BatchItem))


class Health(Schema):
    status = fields.String(
        metadata={
            "description": "ok; loading while the worker loads the model; no-model "
            "before the first training; degraded while the database is down (predictions are "
            "answered and journaled)"
        }
    )
    database = fields.String(metadata={"description": "ok, or down (why: database_error)"})
    database_error = fields.String(allow_none=True)
    journal_rows = fields.Integer(
        metadata={
            "description": "predictions journaled while the database was down, not yet replayed"
        }
    )
    uptime_s = fields.Float()
    started_at = fields.String()
    model_version = fields.String(allow_none=True)
    model_loaded_at = fields.String(allow_none=True)
    model_error = fields.String(allow_none=True)
    runtime = fields.String(
        allow_none=True,
        metadata={"description": "what computes this worker's predictions: jax or openvino"},
    )
    runtime_requested = fields.String(metadata={"description": "INFERENCE_RUNTIME"})
    runtime_note = fields.String(
        allow_none=True,
        metadata={"description": "why the runtime is not the one requested (a fallback)"},
    )
    batching = fields.Dict(
        metadata={
            "description": "micro-batching: setting (BATCH_MAX_SIZE, auto or a number), "
            "max_size (the most images a call for the served model; 1: off), max_wait_ms"
        }
    )
    worker_pid = fields.Integer()


class Ready(Schema):
    status = fields.String(
        metadata={"description": "ok: every worker serves its model at full speed; no-model"}
    )
    model_version = fields.String(allow_none=True)
    runtime = fields.String(allow_none=True)


class UploadFile(Schema):
    file = fields.String()
    label = fields.String()
    sha256 = fields.String()
    stored_as = fields.String()
    split = fields.String(metadata={"description": "train or test: the share it joined"})
    duplicate_of = fields.String()
    reason = fields.String()


class UploadResult(Schema):
    batch = fields.String(allow_none=True)
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_class = fields.Dict(keys=fields.String(), values=fields.Integer())
    accepted = fields.List(fields.Nested(UploadFile))
    duplicates = fields.List(fields.Nested(UploadFile))
    rejected = fields.List(fields.Nested(UploadFile))
    leaks = fields.List(fields.Dict(), metadata={"description": "held out: copies of test images"})
    near_duplicates = fields.List(fields.Dict(), metadata={"description": "see GET /data/issues"})


class Job(OpenSchema):
    id = fields.String()
    kind = fields.String()
    state = fields.String(
        validate=validate.OneOf([state.value for state in JobState]),
        metadata={
            "description": "queued, running, promoted, rejected (by the gate), failed or cancelled"
        },
    )
    trigger = fields.String(
        allow_none=True, metadata={"description": "manual, or auto (the retraining policy)"}
    )
    reason = fields.String(allow_none=True, metadata={"description": "why it was started"})
    cancel_requested_at = fields.Float(allow_none=True)
    parameters = fields.Dict()
    created_at = fields.Float()
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)
    progress = fields.Dict()
    log_tail = fields.List(fields.String())
    report = fields.String(allow_none=True)
    result = fields.Dict(allow_none=True)
    pid = fields.Integer(allow_none=True)
    heartbeat_at = fields.Float(allow_none=True)
    run_dir = fields.String(allow_none=True)
    summary = fields.Dict()


class Stats(OpenSchema):
    """Figures over the latest 10,000 predictions (``window``): the cost of /stats does not grow
    with the prediction log; Prometheus' counters (/metrics) count every prediction."""

    predictions = fields.Integer()
    failed_predictions = fields.Integer()
    error_rate = fields.Float()
    by_class = fields.Dict(keys=fields.String(), values=fields.Integer())
    latency_ms = fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True))
    unknown = fields.Dict(
        metadata={
            "description": "answers the model called unknown among those of a model with a "
            "detector: count, flagged_of, rate (a drift signal: images unlike the training data)"
        }
    )
    feedback = fields.Dict()
    series = fields.Dict()
    window = fields.Dict(metadata={"description": "rows read, their limit, oldest time"})
    uptime_s = fields.Float()
    model_version = fields.String(allow_none=True)
    last_retrain = fields.Nested(Job, allow_none=True)
    retrain_jobs = fields.Dict(keys=fields.String(), values=fields.Integer())


class DataSummary(OpenSchema):
    train = fields.Dict(keys=fields.String(), values=fields.Integer())
    uploads = fields.Dict(keys=fields.String(), values=fields.Integer())
    uploads_train = fields.Dict(keys=fields.String(), values=fields.Integer())
    uploads_test = fields.Dict(keys=fields.String(), values=fields.Integer())
    upload_batches = fields.List(fields.String())


class Samples(OpenSchema):
    samples = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class Brightness(OpenSchema):
    bins = fields.List(fields.Float())
    train = fields.List(fields.Integer())
    production = fields.List(fields.Integer())
    train_mean = fields.Float(allow_none=True)
    production_mean = fields.Float(allow_none=True)
    production_count = fields.Integer()


class FeedbackStored(OpenSchema):
    id = fields.Integer()
    prediction_id = fields.String()
    trusted = fields.Boolean(metadata={"description": "given with the admin token"})
    predicted_label = fields.String()
    true_label = fields.String()
    correct = fields.Boolean()
    created_at = fields.Float()
    training = fields.Dict(
        metadata={
            "description": "status: added (a labelled upload, with its split), duplicate, "
            "or not-used (no admin token)"
        }
    )


class ReviewQuery(StrictSchema):
    limit = fields.Integer(load_default=12, validate=validate.Range(1, 100))


class ReviewItem(OpenSchema):
    id = fields.String()
    created_at = fields.Float()
    label = fields.String()
    confidence = fields.Float()
    model_version = fields.String(allow_none=True)
    image = fields.String(metadata={"description": "a PNG thumbnail as a data URI"})


class ReviewQueue(OpenSchema):
    classes = fields.List(fields.String())
    items = fields.List(fields.Nested(ReviewItem))


class Pointer(OpenSchema):
    version = fields.String(allow_none=True)
    history = fields.List(fields.String())
    changed_at = fields.String(allow_none=True)


class ModelInfo(OpenSchema):
    version = fields.String()
    created_at = fields.String(allow_none=True)
    parent_version = fields.String(allow_none=True)
    class_names = fields.List(fields.String())
    image_size = fields.List(fields.Integer())
    color_mode = fields.String()
    data_fingerprint = fields.String(allow_none=True)
    test_metrics = fields.Dict()
    history = fields.Dict()
    parameters = fields.Dict(
        metadata={
            "description": "how it was trained; model_choice: "
            "what backbone=auto compared and why it chose"
        }
    )
    gate = fields.Dict(allow_none=True)
    train_size = fields.Integer(allow_none=True)
    uploads_used = fields.Integer(allow_none=True)
    skipped_files = fields.List(fields.Dict())
    calibration = fields.Dict(
        metadata={
            "description": "the temperature, the images it was "
            "fitted on (fitted_on: held_out validation images and, for a head-only "
            "pretrained model, out_of_fold answers of its linear head), its 95 % interval, "
            "ECE"
        }
    )
    unknown = fields.Dict(
        metadata={
            "description": "the unknown threshold, its held-out images "
            "and the false-unknown rate they guarantee"
        }
    )
    report = fields.String(allow_none=True)
    served_by_this_worker = fields.String(allow_none=True)


class VersionSummary(OpenSchema):
    version = fields.String()
    created_at = fields.String(allow_none=True)
    parent_version = fields.String(allow_none=True)
    class_names = fields.List(fields.String(), allow_none=True)
    accuracy = fields.Float(allow_none=True)
    f1_macro = fields.Float(allow_none=True)
    train_size = fields.Integer(allow_none=True)
    uploads_used = fields.Integer(allow_none=True)
    gate = fields.Dict(allow_none=True)
    report = fields.String(allow_none=True)


class Versions(OpenSchema):
    current = fields.String(allow_none=True)
    history = fields.List(fields.String())
    versions = fields.List(fields.Nested(VersionSummary))


class Policy(OpenSchema):
    enabled = fields.Boolean()
    min_images = fields.Integer()
    on_drift = fields.Boolean()
    min_interval_s = fields.Float()
    new_images = fields.Integer(metadata={"description": "since the last decided retrain"})
    counted_since = fields.Float(allow_none=True)
    drift = fields.String(allow_none=True)
    last_auto_job = fields.String(allow_none=True)
    next_allowed_at = fields.Float()
    due = fields.Boolean()
    reasons = fields.List(fields.String())
    waiting_for = fields.List(fields.String())
    next = fields.String(metadata={"description": "when it will fire next, in words"})
