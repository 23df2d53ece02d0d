"""Request and response schemas (marshmallow); flask-smorest makes the OpenAPI document of them."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from imgclf.uploads import LABEL_PATTERN, MAX_LABEL_LENGTH

METRICS = ("f1_macro", "accuracy", "precision_macro", "recall_macro")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class RetrainParameters(StrictSchema):
    """Notebook parameters a client may set for a retrain job (an allow-list)."""

    epochs = fields.Integer(validate=validate.Range(1, 200), metadata={"example": 2})
    batch_size = fields.Integer(validate=validate.Range(8, 1024))
    learning_rate = fields.Float(validate=validate.Range(1e-6, 1.0))
    patience = fields.Integer(validate=validate.Range(1, 100))
    validation_fraction = fields.Float(validate=validate.Range(0.05, 0.5))
    rotation = fields.Float(validate=validate.Range(0.0, 0.5))
    zoom = fields.Float(validate=validate.Range(0.0, 0.5))
    shift = fields.Float(validate=validate.Range(0.0, 0.5))
    flip = fields.Boolean()
    include_uploads = fields.Boolean()
    metric = fields.String(validate=validate.OneOf(METRICS))
    tolerance = fields.Float(validate=validate.Range(0.0, 0.2))
    seed = fields.Integer(validate=validate.Range(0, 2**31 - 1))


class Feedback(StrictSchema):
    prediction_id = fields.String(required=True, validate=validate.Length(1, 64))
    label = fields.String(
        required=True,
        validate=[validate.Length(1, MAX_LABEL_LENGTH), validate.Regexp(LABEL_PATTERN)],
        metadata={"description": "the true class of the image"},
    )


class Promote(StrictSchema):
    version = fields.String(required=True, validate=validate.Regexp(r"^v\d{4,}$"))


class ClassScores(Schema):
    prediction_id = fields.String()
    label = fields.String()
    confidence = fields.Float()
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float())


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
    status = fields.String(metadata={"description": "ok, or no-model before the first training"})
    uptime_s = fields.Float()
    started_at = fields.String()
    model_version = fields.String(allow_none=True)
    model_loaded_at = fields.String(allow_none=True)
    model_error = fields.String(allow_none=True)
    worker_pid = fields.Integer()


class UploadFile(Schema):
    file = fields.String()
    label = fields.String()
    sha256 = fields.String()
    stored_as = fields.String()
    duplicate_of = fields.String()
    reason = fields.String()


class UploadResult(Schema):
    batch = fields.String(allow_none=True)
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_class = fields.Dict(keys=fields.String(), values=fields.Integer())
    accepted = fields.List(fields.Nested(UploadFile))
    duplicates = fields.List(fields.Nested(UploadFile))
    rejected = fields.List(fields.Nested(UploadFile))


class Job(Schema):
    id = fields.String()
    kind = fields.String()
    state = fields.String(
        metadata={"description": "queued, running, promoted, rejected (by the gate) or failed"}
    )
    parameters = fields.Dict()
    created_at = fields.Float()
    started_at = fields.Float(allow_none=True)
    finished_at = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)
    progress = fields.Dict()
    log_tail = fields.List(fields.String())
    report = fields.String(allow_none=True)
    result = fields.Dict()
