"""The plain server ``make bench`` compares against: what tutorials do, under the same gunicorn.

Full-resolution decode with Pillow, convert, resize, then ``model.predict`` per request; no
logging, no metrics. ``gunicorn -c python:serve.gunicorn_conf devkit.tutorial_server:app``.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from PIL import Image  # noqa: E402

from imgclf import config  # noqa: E402
from imgclf.model import registry  # noqa: E402


def create_app(models_dir=None) -> Flask:
    from imgclf.model.network import load_model

    models_dir = models_dir or config.get_settings().models_dir
    version = registry.current_version(models_dir)
    info = registry.metadata(models_dir, version)
    model = load_model(registry.model_path(models_dir, version))
    size = tuple(info["image_size"])
    mode = "L" if info["color_mode"] == "grayscale" else "RGB"
    app = Flask("tutorial_server")

    @app.post("/predict")
    def predict():
        image = Image.open(io.BytesIO(request.get_data())).convert(mode).resize(size[::-1])
        array = np.asarray(image, dtype=np.float32).reshape(1, *size, -1) / 255.0
        probabilities = model.predict(array, verbose=0)[0]
        best = int(np.argmax(probabilities))
        return jsonify(label=info["class_names"][best], confidence=float(probabilities[best]))

    return app


app = create_app() if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn") else None
