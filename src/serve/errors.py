"""Every error answers JSON in flask-smorest's format: ``{"code", "status", "message"}``."""

from __future__ import annotations

import errno
import json
from http import HTTPStatus

from flask import Flask, Response, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from imgclf.store import UNAVAILABLE, unavailable


def json_error(code: int, message: str, **extra) -> Response:
    """An error answer that carries more than the message (e.g. the conflicting job)."""
    body = {"code": code, "status": HTTPStatus(code).phrase, "message": message, **extra}
    return Response(json.dumps(body), status=code, content_type="application/json")


def register_error_handlers(app: Flask, api: Api) -> None:
    """Answer 404, 405, 413 and every other HTTP error as JSON with a helpful ``message``.

    A 405 keeps its ``Allow`` header (HTTP requires it), listing the methods the path takes.
    A database that is away answers 503 (with ``Retry-After``), a full disk 507: both say so.
    """

    @app.errorhandler(HTTPException)
    def explain(error):
        data = getattr(error, "data", None) or {}
        if not data.get("message"):
            error.data = {**data, "message": _message(app, error)}
        allow = dict(error.get_headers()).get("Allow")
        if error.code == 405 and allow:  # flask-smorest answers only the headers in data
            error.data["headers"] = {**error.data.get("headers", {}), "Allow": allow}
        return api.handle_http_exception(error)

    def database_unavailable(error):
        app.logger.error(
            "%s %s: the database is unavailable: %s",
            request.method,
            request.path,
            unavailable(error),
        )
        answer = json_error(
            503,
            "the database is unavailable right now (stopped, unreachable or locked); "
            "predictions are still answered and logged once it is back; retry in a few seconds",
        )
        answer.headers["Retry-After"] = "5"
        return answer

    for unavailable_kind in UNAVAILABLE:
        app.register_error_handler(unavailable_kind, database_unavailable)

    @app.errorhandler(OSError)
    def disk_full(error):
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            app.logger.exception("%s %s failed", request.method, request.path)
            return json_error(500, "internal error (logged on the server)")
        app.logger.error("%s %s: disk full: %s", request.method, request.path, error)
        return json_error(
            507,
            "the server's disk is full: nothing of this request was stored; free space (or "
            "delete old uploads or reports) and send it again",
        )


def _message(app: Flask, error: HTTPException) -> str:
    if error.code == 404:
        return f"no such resource: {request.method} {request.path} (see /docs)"
    if error.code == 405:
        allowed = getattr(error, "valid_methods", None) or []
        return f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}"
    if error.code == 413:
        limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        return f"the request is too large (at most {limit} MB)"
    return error.description or HTTPStatus(error.code).phrase
