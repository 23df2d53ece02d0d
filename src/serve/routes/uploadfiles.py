"""One uploaded image as a PNG thumbnail (admin), for the dashboard's list of the issues found
in the data: ``GET /uploads/files/<stored_as>`` (``stored_as`` as ``GET /data/issues`` names
it: ``uploads/<batch>/<class>/<file>``).

The path is never joined from what the request says: the batch and the class are looked up
among the folders that exist, and the file name must be a plain image name (no ``/``, not
hidden, no ``..``) of a regular file there, not a link; anything else is 404.
"""

from __future__ import annotations

import io
from pathlib import Path

from flask import Response
from flask_smorest import Blueprint, abort
from marshmallow import Schema, fields, validate
from PIL import Image

from imgclf.data import curation, folders
from serve import state
from serve.auth import ADMIN, require_token

blueprint = Blueprint("uploadfiles", __name__, description="Uploaded images (admin)")

PNG_RESPONSE = {"description": "a PNG thumbnail", "content": {"image/png": {}}}


class ThumbnailQuery(Schema):
    size = fields.Integer(
        load_default=64,
        validate=validate.Range(16, 512),
        metadata={"description": "the longer side in pixels (16 to 512)"},
    )


def _visible_folders(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in folder.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    }


def uploaded_image(uploads_dir: Path, stored_as: str) -> Path | None:
    """The file ``stored_as`` names under ``uploads_dir``, or None when it names none."""
    parts = stored_as.split("/")
    if len(parts) != 4 or parts[0] != "uploads":
        return None
    batch = {p.name: p for p in curation.batches(uploads_dir)}.get(parts[1])
    folder = _visible_folders(batch).get(parts[2]) if batch is not None else None
    name = parts[3]
    if folder is None or name.startswith(".") or "\x00" in name or "\\" in name:
        return None
    path = folder / name
    try:
        if not folders.is_image_name(name) or path.is_symlink() or not path.is_file():
            return None
    except OSError:  # a name the file system refuses (too long): no such image
        return None
    return path


def thumbnail_png(source: Path | io.BytesIO, size: int) -> bytes:
    """The image at most ``size`` pixels on its longer side; a smaller one scaled up by a whole
    factor with nearest neighbours (an 8 x 8 digit stays sharp)."""
    with Image.open(source) as image:
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    image.thumbnail((size, size))
    if max(image.size) < size:
        factor = size // max(image.size)
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@blueprint.route("/uploads/files/<path:stored_as>", methods=["GET"])
@require_token
@blueprint.arguments(ThumbnailQuery, location="query")
@blueprint.doc(security=ADMIN, responses={"200": PNG_RESPONSE})
@blueprint.alt_response(401, description="no or a wrong admin token")
@blueprint.alt_response(404, description="no uploaded image there")
def uploaded_file(query, stored_as):
    """One uploaded image as a PNG thumbnail (`?size=64`): `stored_as` as `GET /data/issues`
    names it, `uploads/<batch>/<class>/<file>`."""
    path = uploaded_image(state.current().settings.uploads_dir, stored_as)
    if path is None:
        abort(404, message=f"no uploaded image {stored_as!r} (uploads/<batch>/<class>/<file>)")
    try:
        body = thumbnail_png(path, query["size"])
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        abort(404, message=f"{stored_as!r} is not a readable image ({error})")
    return Response(body, content_type="image/png", headers={"Cache-Control": "private"})
