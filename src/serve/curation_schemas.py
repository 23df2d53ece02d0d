"""Request and response schemas of the curation endpoints (``routes/uploads.py``)."""

from __future__ import annotations

from marshmallow import fields, validate

from imgclf.data.uploadrules import LABEL_PATTERN, LABEL_RULE, MAX_LABEL_LENGTH
from imgclf.store.audit import OPERATIONS as CURATION_OPERATIONS
from serve.schemas import Job, OpenSchema, ReviewQuery, StrictSchema

#: A scan of the data (``POST /data/issues/scan``) is a job of the worker like a retrain
ScanJob = Job


class SplitCounts(OpenSchema):
    images = fields.Integer()
    train = fields.Integer(metadata={"description": "images given to the training share"})
    test = fields.Integer(metadata={"description": "images given to the test share"})


class UploadedClass(SplitCounts):
    name = fields.String()
    batches = fields.List(fields.String(), metadata={"description": "batches holding it"})


class UploadBatch(SplitCounts):
    id = fields.String()
    stored_at = fields.String(metadata={"description": "when it was stored (UTC, ISO 8601)"})
    manifest = fields.Boolean(metadata={"description": "whether it has a manifest.json"})
    classes = fields.Dict(keys=fields.String(), values=fields.Nested(SplitCounts))


class UploadInventory(OpenSchema):
    classes = fields.List(fields.Nested(UploadedClass))
    batches = fields.List(fields.Nested(UploadBatch))


class RenameClass(StrictSchema):
    name = fields.String(
        required=True,
        metadata={
            "description": "the new name; an existing class's name merges the two. "
            f"Rule: {LABEL_RULE}",
            "pattern": LABEL_PATTERN.pattern,
            "maxLength": MAX_LABEL_LENGTH,
            "example": "seven",
        },
    )


class RelabelFile(StrictSchema):
    label = fields.String(
        required=True,
        metadata={
            "description": f"the image's new label (a new class or an existing one). "
            f"Rule: {LABEL_RULE}",
            "pattern": LABEL_PATTERN.pattern,
            "maxLength": MAX_LABEL_LENGTH,
            "example": "seven",
        },
    )


class CurationResult(OpenSchema):
    operation = fields.String(validate=validate.OneOf(CURATION_OPERATIONS))
    target = fields.String(metadata={"description": "the batch or class changed"})
    images = fields.Integer(metadata={"description": "images removed or moved"})
    train = fields.Integer()
    test = fields.Integer()
    batches = fields.List(fields.String(), metadata={"description": "batches changed"})
    batches_removed = fields.List(fields.String(), metadata={"description": "left empty"})
    new_name = fields.String()
    merged = fields.Boolean(metadata={"description": "renamed into an existing class"})
    stored_as = fields.String(metadata={"description": "a relabelled image's new place"})
    audit_id = fields.Integer(metadata={"description": "its row in GET /uploads/audit"})


class AuditQuery(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 1000))


class AuditEntry(OpenSchema):
    id = fields.Integer()
    created_at = fields.Float()
    finished_at = fields.Float(allow_none=True)
    operation = fields.String()
    target = fields.String()
    new_name = fields.String(allow_none=True)
    outcome = fields.String(
        metadata={"description": "started, done, refused (404, 409, 422) or failed"}
    )
    images = fields.Integer(allow_none=True)
    batches = fields.Integer(allow_none=True)
    detail = fields.Dict(metadata={"description": "the result, or {error}"})
    actor = fields.String(
        allow_none=True,
        metadata={"description": "first 8 hex digits of the admin token's SHA-256"},
    )
    client = fields.String(allow_none=True, metadata={"description": "the request's address"})


class Leak(OpenSchema):
    batch = fields.String(
        allow_none=True, metadata={"description": "the upload (batch) it came with"}
    )
    file = fields.String(metadata={"description": "its name in the upload"})
    label = fields.String()
    stored_as = fields.String(
        metadata={
            "description": "a training image's place (a scan's finding); uploads that "
            "leak are held out, not stored"
        }
    )
    test_file = fields.String(metadata={"description": "the test image it nearly duplicates"})
    similarity = fields.Float(metadata={"description": "cosine of the two fingerprints"})


class NearDuplicate(OpenSchema):
    batch = fields.String()
    file = fields.String(metadata={"description": "its name in the upload"})
    label = fields.String()
    stored_as = fields.String()
    duplicate_of = fields.String(metadata={"description": "the image it nearly duplicates"})
    duplicate_label = fields.String(metadata={"description": "that image's label"})
    conflict = fields.Boolean(metadata={"description": "the same picture under two labels"})
    similarity = fields.Float()


class LabelIssue(OpenSchema):
    batch = fields.String(allow_none=True, metadata={"description": "None: data/train"})
    file = fields.String(metadata={"description": "its name in the upload"})
    stored_as = fields.String()
    label = fields.String(metadata={"description": "the label it was uploaded with"})
    suggested_label = fields.String(metadata={"description": "the most probable label"})
    score = fields.Float(metadata={"description": "label quality, 0 to 1: low is suspect"})


class Outlier(OpenSchema):
    batch = fields.String()
    file = fields.String(metadata={"description": "its name in the upload"})
    stored_as = fields.String()
    label = fields.String(metadata={"description": "the label it was uploaded with"})
    unknown_score = fields.Float(
        metadata={"description": "the unknown answer's score: over 1.0 is unlike every class"}
    )


class DataIssues(OpenSchema):
    state = fields.String(metadata={"description": "running while a label check runs, else done"})
    model_version = fields.String(
        allow_none=True, metadata={"description": "the model whose features the check used"}
    )
    computed_at = fields.String(allow_none=True)
    notes = fields.List(fields.String(), metadata={"description": "what was not judged, why"})
    label_issues = fields.List(
        fields.Nested(LabelIssue),
        metadata={
            "description": "uploads whose label the served model's features do not "
            "support (confident learning, cleanlab), lowest score first"
        },
    )
    outliers = fields.List(
        fields.Nested(Outlier),
        metadata={"description": "uploads the served model calls unlike every class it knows"},
    )
    leaks = fields.List(
        fields.Nested(Leak),
        metadata={"description": "uploads held out: they nearly duplicate a test image"},
    )
    near_duplicates = fields.List(
        fields.Nested(NearDuplicate),
        metadata={
            "description": "stored uploads nearly duplicating a training image or "
            "another image of their upload; conflict: under a different label"
        },
    )

    scan = fields.Nested(
        Job, allow_none=True, metadata={"description": "the scan of all the data, while live"}
    )


class IssuesQuery(StrictSchema):
    batch = fields.String(metadata={"description": "one upload's findings (its batch id)"})


class OrderedReviewQuery(ReviewQuery):
    order = fields.String(
        load_default="confidence",
        validate=validate.OneOf(["confidence", "useful"]),
        metadata={
            "description": "confidence: the least confident first; useful: the model's "
            "smallest margins, spread over its features (k-centre greedy), so that one "
            "round of labels covers the different kinds of doubt"
        },
    )
