"""Admin endpoints: ``Authorization: Bearer <IMGCLF_ADMIN_TOKEN>``, compared in constant time."""

from __future__ import annotations

import hashlib
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


def _feedback_key() -> bytes | None:
    """The key feedback tokens are signed with: derived from the admin token (every worker
    and replica has it), so that no extra secret must be distributed; None without one."""
    admin = state.current().service.admin_token
    return hashlib.sha256(b"imgclf feedback token\0" + admin.encode()).digest() if admin else None


def feedback_token(prediction_id: str) -> str | None:
    """The token a client needs to give feedback on this prediction (None: feedback is off)."""
    key = _feedback_key()
    if key is None:
        return None
    return hmac.new(key, prediction_id.encode(), hashlib.sha256).hexdigest()[:32]


def check_feedback_token(prediction_id: str, given: str | None) -> None:
    """Refuse feedback whose token is missing or not this prediction's (401, at once: no
    database lookup, so made-up ids cost nothing)."""
    expected = feedback_token(prediction_id)
    if expected is None:
        abort(503, message="feedback is disabled: set IMGCLF_ADMIN_TOKEN (`make run` writes one)")
    if not given:
        abort(
            401,
            message="feedback needs the prediction's feedback_token (returned by /predict) "
            "or the admin token",
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        abort(401, message="wrong feedback_token for this prediction_id")


def client_fingerprint() -> str | None:
    """A keyed hash of the client's address (16 hex digits): counts distinct clients without
    keeping addresses; None when feedback tokens have no key either."""
    key = _feedback_key()
    address = request.remote_addr or ""
    return (
        hmac.new(key, b"client\0" + address.encode(), hashlib.sha256).hexdigest()[:16]
        if key
        else None
    )
