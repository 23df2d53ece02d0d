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


def _read_all(spec: dict[str, tuple]) -> dict:
    """Read ``{name: (reader, default, low, high)}`` from the environment, each within range.

    Raises:
        ConfigError: a value of the wrong kind or outside ``low`` to ``high``, naming it.
    """
    values = {}
    for name, (reader, default, low, high) in spec.items():
        value = reader(name, default)
        if not low <= value <= high:
            raise ConfigError(f"{name}={value}: expected {low:g} to {high:g}")
        values[name] = value
    return values


#: Environment variables a notebook's kernel never gets: the database's URL (it may hold a
#: password) and anything named like a secret. The notebooks read files, never the database.
SECRET_NAMES = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|PRIVATE|^DATABASE_URL$", re.IGNORECASE
)
