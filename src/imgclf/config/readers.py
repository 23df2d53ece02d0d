"""Reading settings from the environment: typed readers that name the variable in their error,
and which variables are secrets."""

from __future__ import annotations

import os
import re
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the pipeline cannot use."""


def _path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None


#: Environment variables a notebook's kernel never gets: the database's URL (it may hold a
#: password) and anything named like a secret. The notebooks read files, never the database.
SECRET_NAMES = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|PRIVATE|^DATABASE_URL(_FILE)?$",
    re.IGNORECASE,
)


def _secret(name: str, default: str = "") -> str:
    """A secret from ``NAME``, or else from the file that ``NAME_FILE`` names.

    Containers get their secrets as files (compose ``secrets:``, Kubernetes Secret volumes), so
    that neither ``inspect`` nor ``/proc/*/environ`` shows them. A final newline is not part of
    the secret.

    Raises:
        ConfigError: ``NAME_FILE`` names a file that cannot be read, or an empty one.
    """
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return default
    try:
        value = Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not text"
        raise ConfigError(f"{name}_FILE={path}: cannot read the secret ({reason})") from None
    if not value:
        raise ConfigError(f"{name}_FILE={path}: the file is empty")
    return value


def _database_url(url: str, password: str) -> str:
    """``url`` with ``password`` put in when it has none (compose: the password is a secret
    file, ``DATABASE_PASSWORD_FILE``, and the URL is not)."""
    if not password:
        return url
    from sqlalchemy.engine import make_url  # only here: config imports nothing heavy
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("DATABASE_URL is not a database URL (not shown)") from None
    if parsed.password:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)
