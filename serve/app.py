"""The REST API: a Flask application factory with an OpenAPI document (flask-smorest).

Run it under gunicorn (``make serve``; see ``serve/gunicorn.conf.py``). Every answer is JSON,
errors included: ``{"code": 422, "status": "Unprocessable Entity", "message": "..."}``.
The OpenAPI 3 document is at ``/openapi.json`` and an interactive page at ``/docs``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import time
import uuid
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path

import numpy as np
from flask import Flask, Response, g, request, send_from_directory
from flask_smorest import Api, Blueprint, abort
from PIL import Image

from imgclf import config, data, imagestats, jobs, registry, uploads
from imgclf.prediction import LiveModel
from imgclf.preprocessing import ImageDecodeError
from imgclf.store import JobConflict, PredictionLogWriter, Store, StoreError
from serve import metrics, schemas

IMAGE_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }
}
BATCH_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
                "required": ["images"],
            }
        }
    }
}
UPLOAD_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "label": {"type": "string", "description": "class of all the files"},
                    "zip": {
                        "type": "string",
                        "format": "binary",
                        "description": "instead of files + label: a zip of <class>/<image>",
                    },
                },
            }
        },
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
    }
}
ADMIN = [{"bearerAuth": []}]


def _settings_config() -> dict:
    settings = config.get_settings()
    return {
        "SETTINGS": settings,
        "ADMIN_TOKEN": os.environ.get("IMGCLF_ADMIN_TOKEN", ""),
        "MAX_CONTENT_LENGTH": int(os.environ.get("IMGCLF_MAX_REQUEST_MB", "100")) * 1024 * 1024,
        "MAX_BATCH": int(os.environ.get("IMGCLF_MAX_BATCH", "64")),
        "UPLOAD_LIMITS": uploads.Limits(),
        "RELOAD_POLL_S": float(os.environ.get("IMGCLF_RELOAD_POLL_S", "0.5")),
        "STARTED_AT": float(os.environ.get("IMGCLF_STARTED_AT", time.time())),
    }


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app. ``overrides`` replaces config values (tests pass ``SETTINGS`` etc.).

    Nothing heavy happens here: the model is loaded by the first request or the reload thread,
    both in the worker process, after gunicorn forked it.
    """
    _load_dotenv()
    app = Flask(__name__)
    app.config.update(
        API_TITLE="imgclf",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/docs/static/",
        JSON_SORT_KEYS=False,
    )
    app.config.update(_settings_config())
    app.config.update(overrides or {})
    limits: uploads.Limits = app.config["UPLOAD_LIMITS"]
    app.config["MAX_FORM_PARTS"] = limits.max_files + 16
    settings: config.Settings = app.config["SETTINGS"]

    api = Api(
        app,
        spec_kwargs={
            "info": {
                "description": "Predict, collect labelled data, retrain, promote, monitor. "
                "Upload, retrain, promote and rollback need `Authorization: Bearer <token>`."
            }
        },
    )
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    _register_error_messages(app, api)
    state = _State(settings, app.config)
    app.extensions["imgclf"] = state
    _register_docs_assets(app)
    _register_metrics_hooks(app)
    for blueprint in _blueprints(state):
        api.register_blueprint(blueprint)
    return app


def _register_error_messages(app: Flask, api: Api) -> None:
    """Every error answers JSON with a ``message`` (flask-smorest's format), 404s and 405s too."""
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(HTTPException)
    def explain(error):
        data = getattr(error, "data", None) or {}
        if not data.get("message"):
            if error.code == 404:
                message = f"no such resource: {request.method} {request.path} (see /docs)"
            elif error.code == 413:
                limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
                message = f"the request is too large (at most {limit} MB)"
            else:
                message = error.description
            error.data = {**data, "message": message}
        return api.handle_http_exception(error)


def _load_dotenv() -> None:
    from dotenv import load_dotenv

    load_dotenv(config.PROJECT_ROOT / ".env", override=False)


class _State:
    """What one worker holds: settings, the database, the live model, caches."""

    def __init__(self, settings: config.Settings, cfg):
        self.settings = settings
        self.cfg = cfg
        self.store = Store(settings.database_url)
        self.log = PredictionLogWriter(self.store)
        self.model = LiveModel(settings.models_dir, cfg["RELOAD_POLL_S"])
        self.hashes = uploads.HashIndex(settings.data_dir)
        self.started_at = cfg["STARTED_AT"]
        self._train_stats: tuple[float, dict] | None = None
        self.collector = metrics.ServiceCollector(
            self.started_at,
            lambda: registry.current_version(settings.models_dir),
            self.store.job_outcomes,
        )

    def predictor(self):
        self.model.start()
        predictor = self.model.predictor
        if predictor is None:
            abort(
                503,
                message=self.model.last_error
                or "no model has been trained yet: run `make train` (or `make run`)",
            )
        return predictor

    def training_statistics(self, limit: int = 2000) -> dict:
        """Brightness and contrast of (up to ``limit``) training images, cached a minute."""
        if self._train_stats and time.time() - self._train_stats[0] < 60:
            return self._train_stats[1]
        stats: dict = {}
        if self.settings.train_dir.is_dir():
            split = data.discover(self.settings.train_dir)
            rng = np.random.default_rng(0)
            chosen = sorted(rng.permutation(len(split.paths))[:limit])
            from imgclf.preprocessing import load_images

            version = registry.current_version(self.settings.models_dir)
            info = registry.metadata(self.settings.models_dir, version) if version else {}
            size = info.get("image_size", [self.settings.image_size])[0]
            mode = info.get("color_mode", self.settings.color_mode)
            images, _, _ = load_images([split.paths[i] for i in chosen], size, mode)
            stats = {k: v.tolist() for k, v in imagestats.batch_statistics(images).items()}
        self._train_stats = (time.time(), stats)
        return stats


def _register_docs_assets(app: Flask) -> None:
    """Serve Swagger UI's files from the swagger-ui-bundle package: the docs work offline."""
    from swagger_ui_bundle import swagger_ui_path

    @app.get("/docs/static/<path:filename>")
    def docs_static(filename):
        return send_from_directory(swagger_ui_path, filename)


def _register_metrics_hooks(app: Flask) -> None:
    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def count_request(response):
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(rule, request.method, str(response.status_code)).inc()
        return response


def _require_token(view):
    """Admin endpoints need ``Authorization: Bearer <IMGCLF_ADMIN_TOKEN>`` (constant time)."""

    @wraps(view)
    def checked(*args, **kwargs):
        from flask import current_app

        expected = current_app.config.get("ADMIN_TOKEN") or ""
        if not expected:
            abort(
                503,
                message="admin endpoints are disabled: set IMGCLF_ADMIN_TOKEN "
                "(`make run` writes one into .env)",
            )
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            abort(
                401,
                message="this endpoint needs 'Authorization: Bearer <admin token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            abort(401, message="wrong admin token", headers={"WWW-Authenticate": "Bearer"})
        return view(*args, **kwargs)

    return checked


def _report_link(settings: config.Settings, report: str | None) -> str | None:
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
        "report": _report_link(settings, info.get("report")),
    }


def _blueprints(state: _State) -> list[Blueprint]:
    settings = state.settings
    store = state.store
    cfg = state.cfg

    service = Blueprint("service", __name__, description="Health, metrics and reports")
    predict = Blueprint("predict", __name__, description="Classify images")
    datasets = Blueprint("data", __name__, description="Labelled data and feedback")
    training = Blueprint("retrain", __name__, description="Retrain jobs")
    models = Blueprint("models", __name__, description="The model registry")

    # ------------------------------------------------------------------------------ service
    @service.route("/health")
    @service.response(200, schemas.Health)
    def health():
        """Status, uptime and the model version this worker serves."""
        state.model.start()
        predictor = state.model.predictor
        return {
            "status": "ok" if predictor else "no-model",
            "uptime_s": round(time.time() - state.started_at, 3),
            "started_at": datetime.fromtimestamp(state.started_at, UTC).isoformat(),
            "model_version": predictor.version if predictor else None,
            "model_loaded_at": predictor.loaded_at if predictor else None,
            "model_error": state.model.last_error,
            "worker_pid": os.getpid(),
        }

    @service.route("/metrics")
    @service.doc(responses={200: {"description": "Prometheus text format"}})
    def prometheus():
        """Prometheus metrics of all workers: requests, latency, predictions, model, jobs."""
        body, content_type = metrics.exposition(state.collector)
        return Response(body, content_type=content_type)

    @service.route("/stats")
    @service.response(200)
    def stats():
        """The production figures as JSON (for the dashboard)."""
        state.log.flush()
        figures = store.statistics()
        finished = [job for job in store.jobs(20) if job["finished_at"]]
        last = finished[0] if finished else None
        return {
            **figures,
            "uptime_s": round(time.time() - state.started_at, 3),
            "model_version": registry.current_version(settings.models_dir),
            "last_retrain": jobs.describe(last, log_lines=0) if last else None,
            "retrain_jobs": store.job_outcomes(),
        }

    @service.route("/reports/")
    @service.route("/reports/<path:name>")
    @service.doc(responses={200: {"description": "an HTML report or the index"}})
    def reports(name: str = "index.html"):
        """The pipeline's HTML reports, read-only."""
        return send_from_directory(settings.reports_dir, name)

    # ------------------------------------------------------------------------------ predict
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

    def _log_rows(predictor, items, latency_ms):
        rows = []
        for item in items:
            row = {
                "id": item["id"],
                "created_at": time.time(),
                "model_version": predictor.version,
                "latency_ms": latency_ms,
                "image_sha256": hashlib.sha256(item["payload"]).hexdigest(),
                "bytes": len(item["payload"]),
            }
            if "error" in item:
                row["error"] = item["error"]
            else:
                row.update(label=item["label"], confidence=item["confidence"])
                row.update(imagestats.pixel_statistics(item["image"]))
                try:
                    row.update(imagestats.header(item["payload"]))
                except Exception:  # the header was readable a moment ago; stats are optional
                    pass
            row.pop("edge_density", None)
            row.pop("mode", None)
            rows.append(row)
        state.log.add(rows)

    def _classify(predictor, payloads: list[tuple[str, bytes]]) -> list[dict]:
        items = []
        for name, payload in payloads:
            item = {"id": uuid.uuid4().hex, "file": name, "payload": payload}
            try:
                item["image"] = predictor.preprocess(payload)
            except ImageDecodeError as error:
                item["error"] = str(error).replace("image: ", "", 1)
            items.append(item)
        valid = [item for item in items if "image" in item]
        if valid:
            probabilities = predictor.predict_images(np.stack([i["image"] for i in valid]))
            for item, row in zip(valid, probabilities, strict=True):
                result = predictor.describe(row)
                item.update(
                    label=result.label,
                    confidence=result.confidence,
                    probabilities=result.probabilities,
                )
                metrics.PREDICTIONS.labels(result.label, predictor.version).inc()
        return items

    @predict.route("/predict", methods=["POST"])
    @predict.doc(requestBody=IMAGE_BODY)
    @predict.response(200, schemas.Prediction)
    @predict.alt_response(422, description="not a readable image")
    def predict_one():
        """Classify one image (multipart field `image`, or a raw `image/*` body)."""
        predictor = state.predictor()
        name, payload = _read_image_payload()
        (item,) = _classify(predictor, [(name, payload)])
        latency_ms = (time.perf_counter() - g.started) * 1000
        _log_rows(predictor, [item], latency_ms)
        metrics.PREDICT_LATENCY.labels("predict").observe(latency_ms / 1000)
        if "error" in item:
            abort(422, message=item["error"])
        return {
            "prediction_id": item["id"],
            "label": item["label"],
            "confidence": item["confidence"],
            "probabilities": item["probabilities"],
            "model_version": predictor.version,
            "latency_ms": round(latency_ms, 3),
        }

    @predict.route("/predict/batch", methods=["POST"])
    @predict.doc(requestBody=BATCH_BODY)
    @predict.response(200, schemas.BatchPrediction)
    def predict_batch():
        """Classify many images (multipart field `images`, repeated); errors are per image."""
        predictor = state.predictor()
        files = request.files.getlist("images") + request.files.getlist("image")
        if not files:
            abort(400, message="send the images as multipart fields named 'images'")
        if len(files) > cfg["MAX_BATCH"]:
            abort(413, message=f"{len(files)} images in one batch; at most {cfg['MAX_BATCH']}")
        items = _classify(predictor, [(f.filename or "image", f.read()) for f in files])
        latency_ms = (time.perf_counter() - g.started) * 1000
        _log_rows(predictor, items, latency_ms)
        metrics.PREDICT_LATENCY.labels("predict_batch").observe(latency_ms / 1000)
        failed = sum("error" in item for item in items)
        if failed == len(items):
            abort(422, message="; ".join(f"{i['file']}: {i['error']}" for i in items))
        keys = ("file", "label", "confidence", "probabilities", "error")
        return {
            "model_version": predictor.version,
            "latency_ms": round(latency_ms, 3),
            "count": len(items),
            "failed": failed,
            "predictions": [
                {"prediction_id": item["id"], **{k: item[k] for k in keys if k in item}}
                for item in items
            ],
        }

    # --------------------------------------------------------------------------------- data
    @datasets.route("/upload-data", methods=["POST"])
    @_require_token
    @datasets.doc(requestBody=UPLOAD_BODY, security=ADMIN)
    @datasets.response(201, schemas.UploadResult)
    @datasets.alt_response(200, schema=schemas.UploadResult, description="nothing new")
    @datasets.alt_response(422, description="no file was a readable image")
    def upload_data():
        """Bulk labelled images: many `files` with one `label`, or one `zip` of class folders."""
        limits = cfg["UPLOAD_LIMITS"]
        try:
            if request.mimetype == "application/zip":
                files = uploads.read_zip(request.get_data(), limits)
            elif request.files.get("zip") is not None:
                if request.files.getlist("files"):
                    abort(400, message="send either 'zip' or 'files' + 'label', not both")
                files = uploads.read_zip(request.files["zip"].read(), limits)
            else:
                sent = request.files.getlist("files") or request.files.getlist("file")
                if not sent:
                    abort(
                        400,
                        message="send images in the multipart field 'files' with a "
                        "'label', or a zip of <class>/<image> in the field 'zip'",
                    )
                label = uploads.validate_label(request.form.get("label"))
                files = [(label, f.filename or "file", f.read()) for f in sent]
            report = uploads.store_upload(files, settings.uploads_dir, state.hashes, limits)
        except uploads.UploadError as error:
            abort(400, message=str(error))
        result = report.as_dict()
        for outcome, count in result["counts"].items():
            metrics.UPLOADED.labels(outcome).inc(count)
        if report.batch:
            return result, 201
        if not report.duplicates:
            message = "; ".join(f"{r['file']}: {r['reason']}" for r in report.rejected)
            return Response(
                json.dumps(
                    {
                        "code": 422,
                        "status": "Unprocessable Entity",
                        "message": f"no image was accepted: {message}",
                        **result,
                    }
                ),
                status=422,
                content_type="application/json",
            )
        return result, 200

    @datasets.route("/data/summary")
    @datasets.response(200)
    def data_summary():
        """Images per class: the training set and the uploads waiting for a retrain."""
        return uploads.class_counts(settings.data_dir)

    @datasets.route("/data/samples")
    @datasets.response(200)
    def data_samples():
        """A few training images per class, as PNG data URIs (`?per_class=4`)."""
        per_class = min(max(request.args.get("per_class", 4, type=int) or 4, 1), 16)
        if not settings.train_dir.is_dir():
            return {"samples": {}}
        split = data.discover(settings.train_dir)
        samples: dict[str, list[str]] = {}
        for path, label in zip(split.paths, split.labels, strict=True):
            name = split.class_names[label]
            if len(samples.setdefault(name, [])) < per_class:
                samples[name].append(_thumbnail(path))
        return {"samples": samples}

    @datasets.route("/data/brightness")
    @datasets.response(200)
    def brightness():
        """Brightness of training images against recent production inputs (histograms)."""
        state.log.flush()
        train = state.training_statistics().get("brightness", [])
        production = [
            row["brightness"] for row in store.recent_inputs() if row["brightness"] is not None
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

    @datasets.route("/feedback", methods=["POST"])
    @datasets.arguments(schemas.Feedback)
    @datasets.response(201)
    def feedback(body):
        """The true label of an earlier prediction (from its `prediction_id`)."""
        state.log.flush()
        deadline = time.time() + 1.0  # another worker may not have written its log yet
        while True:
            try:
                return store.add_feedback(body["prediction_id"], body["label"]), 201
            except StoreError as error:
                if time.time() > deadline:
                    abort(404, message=str(error))
                time.sleep(0.1)

    # ------------------------------------------------------------------------------ retrain
    @training.route("/retrain", methods=["POST"])
    @_require_token
    @training.arguments(schemas.RetrainParameters, required=False)
    @training.doc(security=ADMIN)
    @training.response(202, schemas.Job)
    @training.alt_response(409, description="a retrain job is already queued or running")
    def retrain(parameters):
        """Start a retrain job (the retrain notebook, in its own process); answers its id."""
        if registry.current_version(settings.models_dir) is None:
            abort(409, message="there is no current model to retrain: run `make train` first")
        try:
            job = jobs.start_retrain(store, settings, dict(parameters or {}))
        except JobConflict as conflict:
            return Response(
                json.dumps(
                    {
                        "code": 409,
                        "status": "Conflict",
                        "message": str(conflict),
                        "job": jobs.describe(conflict.job, log_lines=0),
                    }
                ),
                status=409,
                content_type="application/json",
            )
        described = jobs.describe(job, log_lines=0)
        return described, 202, {"Location": f"/retrain/{job['id']}"}

    @training.route("/retrain/<job_id>")
    @training.response(200, schemas.Job)
    def retrain_status(job_id):
        """A job's state, progress, log tail, report link and the gate's scores."""
        job = store.job(job_id)
        if job is None:
            abort(404, message=f"no retrain job {job_id!r}")
        return jobs.describe(job)

    @training.route("/jobs")
    @training.response(200, schemas.Job(many=True))
    def list_jobs():
        """The latest jobs, newest first."""
        return [jobs.describe(job, log_lines=0) for job in store.jobs()]

    # ------------------------------------------------------------------------------- models
    @models.route("/model")
    @models.response(200)
    def current_model():
        """The current version's metadata and test metrics."""
        version = registry.current_version(settings.models_dir)
        if version is None:
            abort(404, message="no model has been trained yet")
        info = registry.metadata(settings.models_dir, version)
        predictor = state.model.predictor
        return {
            **info,
            "report": _report_link(settings, info.get("report")),
            "served_by_this_worker": predictor.version if predictor else None,
        }

    @models.route("/models")
    @models.response(200)
    def list_models():
        """Every version, oldest first, with its scores and the gate's decision."""
        pointer = registry.pointer(settings.models_dir)
        return {
            "current": pointer.get("version"),
            "history": pointer.get("history", []),
            "versions": [
                _version_summary(settings, registry.metadata(settings.models_dir, v))
                for v in registry.list_versions(settings.models_dir)
            ],
        }

    @models.route("/model/rollback", methods=["POST"])
    @_require_token
    @models.doc(security=ADMIN)
    @models.response(200)
    def rollback():
        """Make the previously current version current again."""
        try:
            return registry.rollback(settings.models_dir)
        except registry.RegistryError as error:
            abort(409, message=str(error))

    @models.route("/model/promote", methods=["POST"])
    @_require_token
    @models.arguments(schemas.Promote)
    @models.doc(security=ADMIN)
    @models.response(200)
    def promote(body):
        """Make a given version current (e.g. one the gate rejected, after a human look)."""
        try:
            return registry.promote(settings.models_dir, body["version"])
        except registry.RegistryError as error:
            abort(404, message=str(error))

    return [service, predict, datasets, training, models]


def _thumbnail(path: Path, size: int = 64) -> str:
    with Image.open(path) as image:
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    image.thumbnail((size, size))
    if max(image.size) < size:  # tiny images (digits are 8 x 8): scale up, keep the pixels
        factor = size // max(image.size)
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
