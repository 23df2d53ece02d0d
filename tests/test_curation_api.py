"""Curation of uploads through the REST API (Flask's test client on the ``project`` fixture)
and its audit table. SQLite only: the code is plain SQLAlchemy Core, as the store's; the
data-level behaviour (atomicity included) is tested in ``test_curation``.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import sqlalchemy as sa
from conftest import api_client, png

from imgclf.data import uploads
from imgclf.store import Store, audit, migrations

TOKEN = "curation-test-token-5f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ----------------------------------------------------------------------------------- audit
def test_the_audit_table_comes_from_a_migration_and_matches_the_code(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    assert migrations.upgrade(url)[1] == migrations.head()
    engine = sa.create_engine(url)
    assert sa.inspect(engine).has_table("curation_audit")
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, audit.curation_audit.metadata)
    assert [d for d in differences if "curation_audit" in repr(d)] == []
    log = audit.AuditLog(Store(url).engine)
    entry = log.start("delete-class", "junk", actor=audit.token_id(TOKEN), client="10.0.0.1")
    log.finish(entry, "done", {"images": 3, "batches": ["x", "y"]})
    refused = log.start("delete-batch", "nope", actor=audit.token_id(TOKEN))
    log.finish(refused, "refused", error="no upload batch 'nope'")
    latest, first = log.recent()
    assert (first["outcome"], first["images"], first["batches"]) == ("done", 3, 2)
    assert latest["detail"] == {"error": "no upload batch 'nope'"}
    assert first["actor"] == hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    for stored in tmp_path.glob("audit.db*"):  # the database, its WAL and shared memory
        assert TOKEN.encode() not in stored.read_bytes()


# ------------------------------------------------------------------------------------- API
@pytest.fixture
def client(project):
    return api_client(project, TOKEN)


def api_upload(client, label: str, values: list[int]) -> str:
    files = [(io.BytesIO(png(v)), f"{v}.png") for v in values]
    response = client.post("/upload-data", data={"files": files, "label": label}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["batch"]


PATHS = [
    ("get", "/uploads"),
    ("get", "/uploads/audit"),
    ("delete", "/uploads/batches/x"),
    ("delete", "/uploads/classes/x"),
    ("patch", "/uploads/classes/x"),
]


def test_curation_endpoints_need_the_admin_token(client):
    for method, path in PATHS:
        assert getattr(client, method)(path, json={"name": "y"}).status_code == 401, path
        wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.get_json()["message"] == "wrong admin token"


def test_junk_deleted_and_misspelt_class_renamed_through_the_api(client, project, caplog):
    junk = api_upload(client, "junk", [1, 2, 3])
    api_upload(client, "sevn", [10, 11, 12, 13])
    listing = client.get("/uploads", headers=AUTH).get_json()
    assert {c["name"]: c["images"] for c in listing["classes"]} == {"junk": 3, "sevn": 4}
    assert len(listing["batches"]) == 2 and listing["batches"][0]["stored_at"]

    deleted = client.delete("/uploads/classes/junk", headers=AUTH)
    assert deleted.status_code == 200, deleted.get_json()
    assert deleted.get_json()["batches_removed"] == [junk]
    assert not (project.uploads_dir / junk).exists()
    renamed = client.patch("/uploads/classes/sevn", json={"name": "7"}, headers=AUTH)
    assert renamed.status_code == 200 and renamed.get_json()["new_name"] == "7"
    listing = client.get("/uploads", headers=AUTH).get_json()
    assert [c["name"] for c in listing["classes"]] == ["7"]
    batch = listing["batches"][0]["id"]
    assert client.delete(f"/uploads/batches/{batch}", headers=AUTH).status_code == 200
    assert client.get("/uploads", headers=AUTH).get_json() == {"classes": [], "batches": []}

    trail = client.get("/uploads/audit?limit=10", headers=AUTH).get_json()
    assert [(e["operation"], e["target"], e["outcome"]) for e in trail] == [
        ("delete-batch", batch, "done"),
        ("rename-class", "sevn", "done"),
        ("delete-class", "junk", "done"),
    ]
    assert trail[1]["new_name"] == "7" and trail[2]["images"] == 3
    assert {e["actor"] for e in trail} == {hashlib.sha256(TOKEN.encode()).hexdigest()[:8]}
    assert {e["client"] for e in trail} == {"127.0.0.1"}
    assert TOKEN not in json.dumps(trail) and TOKEN not in caplog.text


def test_api_bad_input_404_422_and_409_while_a_retrain_is_live(client, project):
    api_upload(client, "sevn", [10, 11])
    missing = client.delete("/uploads/classes/dog", headers=AUTH)
    assert missing.status_code == 404 and "'dog'" in missing.get_json()["message"]
    gone = client.delete("/uploads/batches/20990101-000000-abcdef", headers=AUTH)
    assert gone.status_code == 404 and "20990101-000000-abcdef" in gone.get_json()["message"]
    no_class = client.patch("/uploads/classes/dog", json={"name": "cat"}, headers=AUTH)
    assert no_class.status_code == 404 and "'dog'" in no_class.get_json()["message"]
    for bad in ("a/b", "..", " seven", "x" * 65):
        invalid = client.patch("/uploads/classes/sevn", json={"name": bad}, headers=AUTH)
        assert invalid.status_code == 422, (bad, invalid.get_json())
        assert invalid.get_json()["message"], bad
    rule = client.patch("/uploads/classes/sevn", json={"name": "a/b"}, headers=AUTH)
    assert uploads.LABEL_RULE in rule.get_json()["message"]
    extra = client.patch("/uploads/classes/sevn", json={"name": "x", "y": 1}, headers=AUTH)
    assert extra.status_code == 422

    job = Store(project.database_url).create_job("retrain", {}, str(project.reports_dir))
    for method, path in [("delete", "/uploads/classes/sevn"), ("patch", "/uploads/classes/sevn")]:
        busy = getattr(client, method)(path, json={"name": "seven"}, headers=AUTH)
        assert busy.status_code == 409 and job["id"] in busy.get_json()["message"]
        assert busy.get_json()["job"]["id"] == job["id"]
    assert [c["name"] for c in client.get("/uploads", headers=AUTH).get_json()["classes"]] == [
        "sevn"
    ]
    outcomes = [e["outcome"] for e in client.get("/uploads/audit", headers=AUTH).get_json()]
    assert outcomes == ["refused"] * 3  # the 404s; 422 and 409 never reached the data


def test_the_openapi_document_describes_the_curation_endpoints(client):
    spec = client.get("/openapi.json").get_json()
    assert set(spec["paths"]["/uploads/classes/{name}"]) >= {"delete", "patch"}
    assert "delete" in spec["paths"]["/uploads/batches/{batch_id}"]
    rename = spec["components"]["schemas"]["RenameClass"]["properties"]["name"]
    assert rename["pattern"] == uploads.LABEL_PATTERN.pattern
    assert "UploadInventory" in spec["components"]["schemas"]
