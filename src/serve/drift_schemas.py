"""Schemas of the learning loop's figures: input drift (``GET /drift``)."""

from __future__ import annotations

from marshmallow import fields, validate

from imgclf.loop.drift import DriftVerdict
from serve.schemas import OpenSchema


class DriftTest(OpenSchema):
    statistic = fields.Float(allow_none=True)
    p_value = fields.Float(allow_none=True)
    drift = fields.Boolean()


class FeatureDrift(OpenSchema):
    auc = fields.Float(
        allow_none=True,
        metadata={"description": "how well a classifier tells production from test images"},
    )
    p_value = fields.Float(allow_none=True)
    auc_floor = fields.Float(metadata={"description": "the least AUC that is drift"})
    drift = fields.Boolean()
    reference_count = fields.Integer(metadata={"description": "test images compared with"})
    production_count = fields.Integer(metadata={"description": "latest kept images"})
    model_version = fields.String()
    made_at = fields.Float()


class Drift(OpenSchema):
    verdict = fields.String(
        validate=validate.OneOf([verdict.value for verdict in DriftVerdict]),
        metadata={"description": "not-enough-data below DRIFT_MIN_SAMPLE production inputs"},
    )
    message = fields.String()
    model_version = fields.String(allow_none=True)
    production_count = fields.Integer()
    min_sample = fields.Integer()
    window = fields.Integer()
    p_value = fields.Float(metadata={"description": "DRIFT_P_VALUE, for all tests together"})
    threshold = fields.Float(metadata={"description": "per test: p_value / number of tests"})
    features = fields.Dict(keys=fields.String(), values=fields.Nested(DriftTest))
    predicted_classes = fields.Nested(DriftTest)
    model_features = fields.Nested(
        FeatureDrift,
        metadata={
            "description": "a classifier two-sample test on the served model's features "
            "(imgclf.loop.featuredrift); absent until measured"
        },
    )
    drifted = fields.List(fields.String())
