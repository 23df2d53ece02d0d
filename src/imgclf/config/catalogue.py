"""Every environment variable the pipeline, the API and the dashboard read: its kind, default,
range and meaning, in one table (``variables.toml``).

The settings getters read through ``value(name)``, so a default or a range lives there only;
``python -m imgclf.config.reference`` writes the table to ``docs/configuration.md`` (a test
fails when that page is stale).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgclf.config.readers import ConfigError, _float, _int, _path, _secret

#: The groups of the table, in the order the reference shows them.
GROUPS = {
    "pipeline": "Pipeline: folders, database, input format",
    "api": "REST API: token, limits, reload",
    "server": "Server and dashboard: gunicorn, ports, login",
    "runtime": "Inference: runtime, threads, micro-batching",
    "loop": "Learning loop: gate, retention, automatic retraining, drift",
}


@dataclass(frozen=True)
class Variable:
    """One environment variable: ``kind`` is int, float, flag (0 or 1), choice, path, text or
    secret (also read from the file ``NAME_FILE`` names); ``default`` may be a function of the
    machine (then ``shown`` says what it is)."""

    name: str
    group: str
    kind: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    shown: str = ""

    def default_value(self):
        return self.default() if callable(self.default) else self.default

    def read(self):
        """This variable's value from the environment, checked against its kind and range.

        Raises:
            ConfigError: a value of the wrong kind or out of range, naming the variable.
        """
        default = self.default_value()
        if self.kind == "secret":
            return _secret(self.name, default or "")
        if self.kind == "path":
            return _path(self.name, default)
        if self.kind == "text":
            raw = os.environ.get(self.name)
            return default if raw is None else raw
        if self.kind == "choice":
            chosen = (os.environ.get(self.name) or default).strip().lower()
            if chosen not in self.choices:
                expected = ", ".join(self.choices)
                raise ConfigError(f"{self.name}={chosen!r}: expected one of {expected}")
            return chosen
        reader = _float if self.kind == "float" else _int
        number = reader(self.name, default)
        if not self.low <= number <= self.high:
            raise ConfigError(f"{self.name}={number}: expected {self.low:g} to {self.high:g}")
        return bool(number) if self.kind == "flag" else number


def _cores() -> int:
    return os.cpu_count() or 1


#: Defaults that are the machine's (``variables.toml`` names them).
MACHINE_DEFAULTS: dict[str, Callable[[], int]] = {
    "every core": _cores,
    "cores, at most 4": lambda: min(_cores(), 4),
}


#: The repository root: src/imgclf/config/catalogue.py -> four levels up.
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _load() -> tuple[Variable, ...]:
    table = tomllib.loads((Path(__file__).parent / "variables.toml").read_text())
    variables = []
    for name, entry in table.items():
        entry = dict(entry)
        default = entry.pop("default", None)
        if entry["kind"] == "path" and default is not None:
            default = PROJECT_ROOT / default
        elif entry["kind"] in ("int", "float") and isinstance(default, str):
            entry.setdefault("shown", default)
            default = MACHINE_DEFAULTS[default]
        choices = tuple(entry.pop("choices", ()))
        variables.append(Variable(name=name, default=default, choices=choices, **entry))
    return tuple(variables)


VARIABLES: tuple[Variable, ...] = _load()

BY_NAME = {variable.name: variable for variable in VARIABLES}


def value(name: str):
    """The value of the catalogued variable ``name`` (KeyError: not in the catalogue).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    return BY_NAME[name].read()


def values(*names: str) -> dict:
    return {name: value(name) for name in names}
