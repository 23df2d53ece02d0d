"""Admin endpoints: ``Authorization: Bearer <IMGCLF_ADMIN_TOKEN>``, compared in constant time."""

from __future__ import annotations

import hmac
from functools import wraps

from flask import request
from flask_smorest import abort

from serve import state

#: The OpenAPI security requirement of an admin endpoint.
ADMIN = [{"bearerAuth": []}]


def check_token() -> None:
    """Refuse the request unless it carries the admin token (503 when none is configured)."""
    expected = state.current().service.admin_token
    if not expected:
        abort(
            503,
            message="admin endpoints are disabled: set IMGCLF_ADMIN_TOKEN "
            "(`make run` writes one into .env)",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        abort(
            401,
            message="this endpoint needs 'Authorization: Bearer <admin token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        abort(401, message="wrong admin token", headers={"WWW-Authenticate": "Bearer"})


def token_given() -> bool:
    """Whether the request carries the admin token; one that carries a wrong one is refused."""
    if not request.headers.get("Authorization"):
        return False
    check_token()
    return True


def require_token(view):
    """Refuse the request unless it carries the admin token (503 when none is configured)."""

    @wraps(view)
    def checked(*args, **kwargs):
        check_token()
        return view(*args, **kwargs)

    return checked
