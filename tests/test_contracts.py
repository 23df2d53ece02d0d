"""Contracts between modules, each with one owner: a test fails when a user drifts from it."""

from __future__ import annotations

import ast
import dataclasses
import json

import pytest
from marshmallow import fields, validate

from imgclf import config
from imgclf.config import PROJECT_ROOT
from imgclf.loop import drift
from imgclf.loop.gate import GateThresholds
from imgclf.model import registry
from imgclf.model.network import TrainParams
from serve import drift_schemas, schemas


def notebook_parameters(name: str) -> dict[str, object]:
    """The parameters cell of a notebook: name -> default value."""
    notebook = json.loads((PROJECT_ROOT / "notebooks" / name).read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
    }


KINDS = {fields.Integer: int, fields.Float: float, fields.Boolean: bool, fields.String: str}
#: Notebook parameters the API does not let a client set: where files go is the server's choice.
SERVER_ONLY = {"data_dir", "models_dir", "run_dir", "model_version"}


def test_every_retrain_parameter_the_api_accepts_is_a_parameter_of_the_retrain_notebook():
    cell = notebook_parameters("04_retrain.ipynb")
    accepted = schemas.RetrainParameters().fields
    for name, field in accepted.items():
        assert name in cell, (
            f"POST /retrain accepts {name!r}; 04_retrain.ipynb has no such parameter"
        )
        kind = KINDS[type(field)]
        default = cell[name]
        if default is None:  # "as before" (e.g. as the current model was trained)
            assert field.allow_none, f"{name}: the notebook's default is None; the API: not null"
            continue
        assert isinstance(default, kind) or (kind is float and type(default) is int), (
            f"{name}: the API takes {kind.__name__}, the notebook's default is {default!r}"
        )
    assert set(cell) - set(accepted) <= SERVER_ONLY, set(cell) - set(accepted) - SERVER_ONLY


def test_notebook_02_trains_with_the_defaults_of_train_params():
    given = notebook_parameters("02_train.ipynb")
    expected = {f.name: f.default for f in dataclasses.fields(TrainParams)}
    assert {name: given[name] for name in expected} == expected


def test_gate_thresholds_are_the_settings_unless_a_run_gives_them():
    """Both training notebooks name every threshold the gate knows and leave it None: the
    setting's, applied in one place (``GateThresholds.from_settings``), no sentinel."""
    thresholds = {f.name for f in dataclasses.fields(GateThresholds)} - {"metric", "tolerance"}
    for notebook in ("02_train.ipynb", "04_retrain.ipynb"):
        given = notebook_parameters(notebook)
        assert {name: given.get(name, "missing") for name in thresholds} == dict.fromkeys(
            thresholds
        ), notebook
        assert given["tolerance"] == GateThresholds().tolerance, notebook


def test_the_gate_figures_have_one_list_of_ranges():
    accepted = schemas.RetrainParameters().fields
    for name, (low, high) in config.GATE_RANGES.items():
        [rule] = [v for v in accepted[name].validators if isinstance(v, validate.Range)]
        assert (rule.min, rule.max) == (low, high), name
    for name in ("GATE_MAX_RECALL_DROP", "GATE_ALPHA"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(name, "5")
            with pytest.raises(config.ConfigError, match=name):
                config.get_loop_settings()


def test_version_names_and_drift_verdicts_come_from_their_owners():
    [rule] = schemas.Promote().fields["version"].validators
    assert rule.regex.pattern == registry.VERSION_PATTERN.pattern
    [choices] = drift_schemas.Drift().fields["verdict"].validators
    assert list(choices.choices) == [verdict.value for verdict in drift.DriftVerdict]


def test_settings_are_read_only_through_config():
    """No module of the service reads the environment itself, but the ones that set it up:
    the package (Keras' backend), gunicorn's configuration (the workers' environment) and the
    settings package itself (``imgclf/config/``)."""
    allowed = {"imgclf/__init__.py", "serve/gunicorn_conf.py"}
    readers = []
    for package in ("imgclf", "serve", "dashboard"):
        for path in (PROJECT_ROOT / "src" / package).rglob("*.py"):
            name = path.relative_to(PROJECT_ROOT / "src").as_posix()
            text = path.read_text()
            if (
                name not in allowed
                and not name.startswith("imgclf/config/")
                and ("os.environ" in text or "os.getenv" in text)
            ):
                readers.append(name)
    assert readers == []


def test_a_warning_raised_in_our_code_fails_the_tests():
    """pyproject's filterwarnings: a warning from our own code is an error, so a new one is
    seen (the known third-party ones are silenced there by name)."""
    ours = {"__name__": "imgclf.files"}  # as if raised by a line of imgclf/files.py
    with pytest.raises(UserWarning, match="a new warning"):
        exec("import warnings; warnings.warn('a new warning')", ours)
