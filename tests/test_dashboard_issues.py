"""The Data tab's issues found in the data against the real API: the thumbnail endpoint
(``GET /uploads/files/<stored_as>``, admin, nothing outside the uploads) and the dashboard's
accept, relabel and delete driven through its own ``ApiClient``, whose HTTP goes to Flask's test
client of the API on the ``project`` fixture (the digits) instead of a socket."""

from __future__ import annotations

import base64
import io
import os
import re
import zipfile
from urllib.parse import urlsplit

import numpy as np
import panel as pn
import pytest
import requests
from conftest import api_client, png, wait_for
from PIL import Image
from requests.structures import CaseInsensitiveDict

from dashboard.client import ApiClient
from dashboard.components import DataView
from dashboard.state import DashboardState

TOKEN = "issues-test-token-41c7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FlaskAdapter(requests.adapters.BaseAdapter):
    """``requests`` sends what it prepared (query, JSON, multipart) to a Flask test client."""

    def __init__(self, app_client):
        super().__init__()
        self.app_client = app_client

    def send(self, request, **kwargs):
        url = urlsplit(request.url)
        answer = self.app_client.open(
            url.path,
            method=request.method,
            query_string=url.query,
            headers=dict(request.headers),
            data=request.body,
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.status.partition(" ")[2]
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.get_data()
        response.url, response.request = request.url, request
        return response

    def close(self):
        pass


@pytest.fixture
def client(project):
    return api_client(project, TOKEN)


def dashboard_client(app_client, token: str = TOKEN) -> ApiClient:
    """The dashboard's own client of the API, its requests answered by ``app_client``."""
    api = ApiClient("http://api", token)
    api.session.mount("http://api", FlaskAdapter(app_client))
    return api


def test_an_uploaded_image_comes_as_a_png_thumbnail_and_nothing_outside_the_uploads(
    client, project
):
    files = [(io.BytesIO(png(seed, size=10)), f"{seed}.png") for seed in (1, 2)]
    answer = client.post("/upload-data", data={"files": files, "label": "7"}, headers=AUTH)
    assert answer.status_code == 201, answer.get_json()
    stored = answer.get_json()["accepted"][0]["stored_as"]
    batch = stored.split("/")[1]
    assert client.get(f"/uploads/files/{stored}").status_code == 401
    wrong = client.get(f"/uploads/files/{stored}", headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    shown = client.get(f"/uploads/files/{stored}?size=40", headers=AUTH)
    assert shown.status_code == 200 and shown.mimetype == "image/png"
    with Image.open(io.BytesIO(shown.data)) as image:
        assert image.format == "PNG" and image.size == (40, 40)  # 10 px: scaled up 4 times
    assert client.get(f"/uploads/files/{stored}?size=8", headers=AUTH).status_code == 422
    # a link planted among the uploads, to a training image: never followed
    train_image = next((project.train_dir / "3").glob("*.png"))
    link = project.uploads_dir / batch / "7" / "planted.png"
    os.symlink(train_image, link)
    outside = [
        f"train/3/{train_image.name}",
        f"uploads/{batch}/../../train/3/{train_image.name}",
        f"uploads/{batch}/%2e%2e/{train_image.name}",
        f"uploads/{batch}/7/..",
        f"uploads/{batch}/7/planted.png",
        f"uploads/{batch}/manifest.json",
        f"uploads/{batch}/7/.hidden.png",
        f"uploads/{batch}/7/%00.png",
        "uploads/../models/current.json",
        f"uploads/{batch}/7/{stored.split('/')[3]}/x.png",
        "uploads/20260101-000000-abcdef/7/x.png",
    ]
    for path in outside:
        refused = client.get(f"/uploads/files/{path}", headers=AUTH)
        assert refused.status_code == 404, (path, refused.status_code)
        assert "no uploaded image" in refused.get_json()["message"]
    # and the dashboard's client reads the same bytes
    assert dashboard_client(client).upload_file_thumbnail(stored, 40) == shown.data


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def resized(path, factor: int) -> bytes:
    """A user's copy of an image: larger, so a different file of the same picture."""
    with Image.open(path) as image:
        copy = image.resize((image.width * factor, image.height * factor), Image.BICUBIC)
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_size(row) -> tuple[int, int]:
    """The size of the PNG a row of the issues shows (decoded from its data URI)."""
    found = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", row[0].object)
    assert found, row[0].object
    with Image.open(io.BytesIO(base64.b64decode(found.group(1)))) as image:
        return image.size


def click(row, label: str) -> None:
    [button] = [b for b in row.select(pn.widgets.Button) if b.label.startswith(label)]
    button.clicks += 1


@pytest.mark.slow  # waits for the label check of the upload (a background thread)
def test_the_data_tab_accepts_relabels_and_deletes_an_issue_through_the_api(client, project):
    """Training digits uploaded again (resized), eight of them in a wrong folder: the Data tab
    lists them with thumbnails; one suggestion accepted, one image relabelled, one deleted,
    each after its confirmation, and the lists reload without them."""
    rng = np.random.default_rng(11)
    entries = {}
    for class_dir in sorted(p for p in project.train_dir.iterdir() if p.is_dir()):
        for path in sorted(class_dir.glob("*.png"))[:6]:
            entries[f"{class_dir.name}/{path.stem}-copy.png"] = resized(path, 2)
    names = sorted(entries)
    for index in rng.choice(len(names), 8, replace=False):
        label, name = names[index].split("/")
        entries[f"{(int(label) + 1 + rng.integers(9)) % 10}/{name}"] = entries.pop(names[index])
    view = DataView(DashboardState(dashboard_client(client)))
    view.zip_input.filename, view.zip_input.value = "copies.zip", zipped(entries)
    view.on_upload_zip()
    assert re.match(r"\*\*(5\d|60) accepted", view.result.object), view.result.object
    issues = view.issues

    def checked():
        issues.refresh()
        return "running" not in issues.summary.object

    wait_for(checked, 120, "the label check of the upload")
    assert "Checked with model **v0001**" in issues.summary.object
    flagged = [row for row in issues.label_issues.objects if isinstance(row, pn.Row)]
    conflicts = [row for row in issues.conflicts.objects if isinstance(row, pn.Row)]
    print(f"{len(flagged)} label issues, {len(conflicts)} conflicts of 8 wrong labels")
    assert len(flagged) >= 3 and conflicts, issues.summary.object
    assert thumbnail_size(flagged[0]) == (64, 64)
    uploads = project.uploads_dir

    # accept the first suggestion: nothing moves before the confirmation
    first = flagged[0].name
    suggested = re.search(r"suggested \*\*(.+?)\*\*", flagged[0][1].object).group(1)
    click(flagged[0], "Accept")
    assert (project.data_dir / first).is_file()
    issues.confirmation.button.clicks += 1
    batch, _, name = first.split("/")[1:]
    assert (uploads / batch / suggested / name).is_file() and not (
        project.data_dir / first
    ).exists()
    assert f"Relabelled `{first}` as **{suggested}**" in issues.result.object
    assert first not in [row.name for row in issues.label_issues.objects]

    # relabel the next one to a class of one's choice
    row = next(r for r in issues.label_issues.objects if isinstance(r, pn.Row))
    second, chosen = row.name, row.select(pn.widgets.Select)[0]
    chosen.value = next(c for c in chosen.options if c != chosen.value)
    click(row, "Relabel")
    issues.confirmation.button.clicks += 1
    assert (uploads / second.split("/")[1] / chosen.value / second.split("/")[3]).is_file()

    # and delete the next
    row = next(r for r in issues.label_issues.objects if isinstance(r, pn.Row))
    third = row.name
    click(row, "Delete")
    assert "Delete <code>" in issues.confirmation.text.object
    issues.confirmation.button.clicks += 1
    assert not (project.data_dir / third).exists() and "Deleted `" in issues.result.object
    listed = [r.name for r in issues.label_issues.objects + issues.conflicts.objects]
    assert not {first, second, third} & set(listed)
    trail = client.get("/uploads/audit?limit=3", headers=AUTH).get_json()
    assert [e["operation"] for e in trail] == ["delete-file", "relabel-file", "relabel-file"]
    assert [e["target"] for e in trail] == [third, second, first]
