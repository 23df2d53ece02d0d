"""The REST API: a Flask application factory with an OpenAPI document (flask-smorest).

Run it under gunicorn (``make serve``; see ``serve/gunicorn_conf.py``). Every answer is JSON,
errors included: ``{"code": 422, "status": "Unprocessable Entity", "message": "..."}``.
The OpenAPI 3 document is at ``/openapi.json`` and an interactive page at ``/docs``. The
routes live in ``serve/routes/``, one module per blueprint; what a worker holds is
``serve.state.WorkerState``.
"""

from __future__ import annotations

import time

from flask import Flask, g, request, send_from_directory
from flask_smorest import Api
from werkzeug.middleware.proxy_fix import ProxyFix

from imgclf import config
from serve import errors, metrics, routes, state


def create_app(
    settings: config.Settings | None = None, service: config.ServiceSettings | None = None
) -> Flask:
    """Build the app for these settings (default: from the environment and ``.env``).

    Nothing heavy happens here: the model is loaded by the first request or the reload thread,
    both in the worker process, after gunicorn forked it.

    Raises:
        config.ConfigError: a setting has a value the service cannot use.
    """
    _load_dotenv()
    settings = settings or config.get_settings()
    service = service or config.get_service_settings()
    app = Flask(__name__)
    if service.trusted_proxies:  # behind nginx: the client is the address it saw, not nginx
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=service.trusted_proxies)
    app.config.update(
        API_TITLE="imgclf",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/docs/static/",
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=service.max_request_bytes,
        MAX_FORM_PARTS=service.upload_limits.max_files + 16,
    )
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
    errors.register_error_handlers(app, api)
    worker = state.WorkerState(settings, service)
    worker.model.start()  # loads the current model in the background, in this worker process
    app.extensions[state.EXTENSION] = worker
    _register_docs_assets(app)
    _register_metrics_hooks(app)
    for blueprint in routes.BLUEPRINTS:
        api.register_blueprint(blueprint)
    return app


def _load_dotenv() -> None:
    from dotenv import load_dotenv

    load_dotenv(config.PROJECT_ROOT / ".env", override=False)


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
        method = request.method if request.method in metrics.METHODS else "other"
        metrics.REQUESTS.labels(rule, method, str(response.status_code)).inc()
        return response
