"""The request path of ``/predict``: no schema machinery on it, the same contract; ``/ready``.

The query string is read by a plain check where it is one known value and by the schema
otherwise (the same 422s); answers are encoded once, as ``jsonify`` wrote the schema's dump;
the OpenAPI document of ``?explain`` is the one ``blueprint.arguments`` wrote; ``/ready`` says
503 until the model is loaded and every path compiled (explanations included), and under
gunicorn until every worker serves.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
from conftest import png, running_server, wait_for
from flask import Flask
from flask_smorest import Api, Blueprint
from werkzeug.exceptions import HTTPException

from imgclf import config
from imgclf.model import prediction, saliency
from serve import schemas, state
from serve.app import create_app
from serve.routes import predict

QUERIES = [
    "",
    "explain=true",
    "explain=1",
    "explain=yes",
    "explain=False",
    "explain=0",
    "explain=off",
    "explain=maybe",
    "explain=",
    "explain=true&explain=false",
    "verbose=1",
    "explain=true&verbose=1",
]


def _read(query: str, read) -> tuple:
    """``("ok", value)`` or ``(code, error data)`` of ``read()`` on ``/predict?<query>``."""
    with Flask(__name__).test_request_context(f"/predict?{query}", method="POST"):
        try:
            return "ok", read()
        except HTTPException as error:
            return error.code, (getattr(error, "data", None) or {}).get("messages")


@pytest.mark.parametrize("query", QUERIES)
def test_the_query_is_read_as_the_schema_reads_it(query):
    def by_schema():
        return predict.blueprint.ARGUMENTS_PARSER.parse(schemas.ExplainQuery(), location="query")[
            "explain"
        ]

    assert _read(query, predict._explain) == _read(query, by_schema)


def _operation(decorate) -> dict:
    app = Flask(__name__)
    app.config.update(API_TITLE="t", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    api = Api(app)
    blueprint = Blueprint("b", __name__)

    @blueprint.route("/p", methods=["POST"])
    @decorate
    @blueprint.response(200, schemas.Prediction)
    def view(*args):
        return {}

    api.register_blueprint(blueprint)
    return api.spec.to_dict()["paths"]["/p"]["post"]


def test_the_document_of_explain_is_what_blueprint_arguments_wrote():
    parsed = _operation(Blueprint("x", __name__).arguments(schemas.ExplainQuery, location="query"))
    documented = _operation(predict._query_documented)
    assert documented == parsed
    assert [p["name"] for p in documented["parameters"]] == ["explain"]
    assert "422" in documented["responses"]


@pytest.fixture
def client(project):
    service = replace(config.get_service_settings(), admin_token="t", reload_poll_s=0.1)
    client = create_app(project, service).test_client()
    wait_for(lambda: client.get("/ready").status_code == 200, 120, "the model to be ready")
    return client


def test_an_answer_is_the_schema_dump_encoded_once(client):
    answer = client.post("/predict", data=png(3), content_type="image/png")
    body = answer.get_json()
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert schemas.Prediction().dump(body) == body
    assert answer.data == (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()
    images = [(io.BytesIO(png(seed)), f"{seed}.png") for seed in range(3)]
    batch = client.post("/predict/batch", data={"images": images})
    assert batch.status_code == 200
    assert schemas.BatchPrediction().dump(batch.get_json()) == batch.get_json()
    assert batch.get_json()["count"] == 3 and batch.get_json()["failed"] == 0


def test_a_bad_query_gets_the_schemas_error(client):
    answer = client.post("/predict?explain=maybe", data=png(3), content_type="image/png")
    assert answer.status_code == 422
    assert answer.get_json()["errors"] == {"query": {"explain": ["Not a valid boolean."]}}
    # webargs leaves out unknown query fields (its default for the query string): as before
    other = client.post(
        "/predict/batch?verbose=1", data={"images": [(io.BytesIO(png(1)), "a.png")]}
    )
    assert other.status_code == 200 and "saliency" not in other.get_json()["predictions"][0]


def test_explanations_of_every_batch_size_were_compiled_at_load(client):
    compiled = [g._cache_size() for g in saliency._GRADIENTS.values()]
    for count in (1, 3, 5, 16):
        files = [(io.BytesIO(png(seed)), f"{seed}.png") for seed in range(count)]
        answer = client.post("/predict/batch?explain=true", data={"images": files})
        assert answer.status_code == 200, answer.get_json()
        assert all(item["saliency"] for item in answer.get_json()["predictions"])
    assert [g._cache_size() for g in saliency._GRADIENTS.values()] == compiled


def test_ready_says_503_until_the_model_is_compiled(project, monkeypatch):
    release = threading.Event()
    warm_up = prediction.Predictor.warm_up

    def held(self, *args):
        warm_up(self, *args)
        release.wait(60)

    monkeypatch.setattr(prediction.Predictor, "warm_up", held)
    client = create_app(project).test_client()
    try:
        answer = client.get("/ready")
        assert answer.status_code == 503
        assert answer.get_json()["message"].startswith("not ready: this worker is loading")
        assert client.get("/health").get_json()["status"] == "loading"
    finally:
        release.set()
    wait_for(lambda: client.get("/ready").status_code == 200, 60, "/ready to say 200")
    assert client.get("/ready").get_json()["status"] == "ok"


def test_a_server_is_ready_when_every_worker_has_its_mark(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    for pid in (os.getpid(), int(dead.stdout)):
        state.ready_mark(str(tmp_path), pid).touch()
    (tmp_path / "counter_123.db").touch()  # prometheus_client's files are not marks
    assert state.ready_workers(tmp_path) == 1


@pytest.mark.slow
def test_under_gunicorn_ready_waits_for_both_workers(project, tmp_path):
    import requests

    with running_server(project, tmp_path) as (url, _):
        wait_for(lambda: requests.get(f"{url}/ready", timeout=5).status_code == 200, 120, "ready")
        assert len(list((tmp_path / "metrics").glob("ready-*.flag"))) == 2
        answer = requests.post(
            f"{url}/predict?explain=true", data=png(2), headers={"Content-Type": "image/png"}
        )
        assert answer.status_code == 200 and answer.json()["saliency"]
