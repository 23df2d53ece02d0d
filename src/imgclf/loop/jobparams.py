"""The retrain parameters a client may set: the one allow-list, with types and ranges.

The API validates ``POST /retrain`` bodies with ``RetrainParameters`` (``serve.schemas``
re-exports it) and the worker validates a claimed job's parameters with the same schema before
anything runs (``check``): a job row written into the database by other means cannot pass a
parameter the API would refuse. This matters because papermill writes parameter names into the
notebook's code unescaped: an unchecked name is code run by the kernel.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from imgclf.config import GATE_RANGES
from imgclf.loop.gate import GATE_METRICS


class RetrainParameters(Schema):
    """Notebook parameters a client may set for a retrain job (an allow-list)."""

    class Meta:
        unknown = RAISE  # an unknown name is an error, not silently ignored

    epochs = fields.Integer(validate=validate.Range(1, 200), metadata={"example": 2})
    batch_size = fields.Integer(validate=validate.Range(8, 1024))
    learning_rate = fields.Float(validate=validate.Range(1e-6, 1.0))
    patience = fields.Integer(validate=validate.Range(1, 100))
    validation_fraction = fields.Float(validate=validate.Range(0.05, 0.5))
    balance = fields.Float(validate=validate.Range(0.0, 1.0))
    rotation = fields.Float(validate=validate.Range(0.0, 0.5))
    zoom = fields.Float(validate=validate.Range(0.0, 0.5))
    shift = fields.Float(validate=validate.Range(0.0, 0.5))
    flip = fields.Boolean(allow_none=True)  # null: as the current model was trained
    include_uploads = fields.Boolean()
    metric = fields.String(validate=validate.OneOf(GATE_METRICS))
    tolerance = fields.Float(validate=validate.Range(*GATE_RANGES["tolerance"]))
    # the gate's thresholds: null (or left out) is the GATE_* setting's
    min_test_images = fields.Integer(
        allow_none=True, validate=validate.Range(*GATE_RANGES["min_test_images"])
    )
    max_recall_drop = fields.Float(
        allow_none=True, validate=validate.Range(*GATE_RANGES["max_recall_drop"])
    )
    min_new_class_recall = fields.Float(
        allow_none=True, validate=validate.Range(*GATE_RANGES["min_new_class_recall"])
    )
    alpha = fields.Float(allow_none=True, validate=validate.Range(*GATE_RANGES["alpha"]))
    seed = fields.Integer(validate=validate.Range(0, 2**31 - 1))


def check(parameters: dict) -> str | None:
    """Why these parameters would be refused by the API, naming each parameter (None: fine)."""
    try:
        RetrainParameters().load(parameters)
    except ValidationError as error:
        problems = "; ".join(
            f"{name!r}: {' '.join(map(str, messages))}"
            for name, messages in sorted(error.normalized_messages().items())
        )
        return f"parameters refused: {problems}"
    return None
