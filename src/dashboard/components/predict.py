"""Predict: upload an image, see it, the label and every class's probability; correct it."""

from __future__ import annotations

import base64
import io

import panel as pn
from PIL import Image

from dashboard import charts
from dashboard.components.base import Component
from dashboard.components.review import training_note


def preview(payload: bytes, side: int = 220) -> bytes | None:
    """A PNG preview of an uploaded image; tiny images are enlarged with sharp pixels."""
    try:
        image = Image.open(io.BytesIO(payload))
        image.thumbnail((side, side))
        if max(image.size) < side // 2:
            factor = side // max(image.size)
            image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception:  # the API will say what is wrong with the file
        return None


def overlay(payload: bytes, heat_png: str, side: int = 220) -> bytes | None:
    """The image (as the model sees it: square, its input size) with the heat map over it in
    red, enlarged with sharp pixels."""
    try:
        heat = Image.open(io.BytesIO(base64.b64decode(heat_png))).convert("L")
        image = Image.open(io.BytesIO(payload)).convert("RGB").resize(heat.size)
        red = Image.new("RGB", heat.size, (230, 30, 30))
        mixed = Image.composite(red, image, heat.point(lambda v: int(v * 0.8)))
        factor = max(1, side // max(heat.size))
        mixed = mixed.resize((heat.width * factor, heat.height * factor), Image.NEAREST)
        buffer = io.BytesIO()
        mixed.save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception:  # no map shown rather than a broken page
        return None


class PredictView(Component):
    title = "Predict"

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.last_prediction: dict | None = None
        self.image_input = pn.widgets.FileInput(accept="image/*", label="Image")
        self.image_input.param.watch(self.on_image, "value")
        self.preview = pn.pane.PNG(None, height=220, width=220)
        self.heat = pn.pane.PNG(None, height=220, width=220)
        self.verdict = pn.pane.Markdown("Upload or drop an image to classify it.")
        self.chart = pn.Column()
        self.feedback_buttons = pn.FlexBox()
        self.feedback_text = pn.pane.Markdown("")

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("### Classify an image\nChoose an image file (PNG, JPEG, ...)."),
            self.image_input,
            pn.Row(self.preview, self.heat, pn.Column(self.verdict, self.chart)),
            pn.pane.Markdown("**Wrong? This image is actually:** (one click stores it)"),
            self.feedback_buttons,
            self.feedback_text,
        )

    def on_image(self, event) -> None:
        if not event.new:
            return
        self.preview.object = preview(event.new)
        name = self.image_input.filename or "image"
        result = self.call(self.client.predict, event.new, name, True)
        if result is None:
            self.verdict.object = "Prediction failed: see the message above."
            return
        self.last_prediction = result
        # which pixels carried the answer (red), over the image as the model sees it
        self.heat.object = overlay(event.new, result["saliency"]) if "saliency" in result else None
        headline = f"## Predicted: **{result['label']}**"
        if result.get("unknown"):  # shown apart: the model does not know this kind of image
            headline = (
                f"## Unknown: unlike every class this model knows\nclosest: "
                f"**{result['label']}** (distance {result['unknown_score']:.1f} times the "
                "threshold); label it below if it belongs to a class"
            )
        self.verdict.object = (
            f"{headline}\nconfidence {result['confidence']:.1%} · "
            f"model {result['model_version']} · {result['latency_ms']:.0f} ms · id "
            f"`{result['prediction_id'][:8]}`"
        )
        self.chart.objects = [
            pn.pane.Bokeh(charts.probabilities(result["probabilities"], result["label"]))
        ]
        self.feedback_buttons.objects = [
            self._feedback_button(name) for name in result["probabilities"]
        ]
        self.feedback_text.object = ""

    def _feedback_button(self, label: str) -> pn.widgets.Button:
        button = pn.widgets.Button(label=label, color="light", width=90)
        button.on_click(lambda _: self.send_feedback(label))
        return button

    def send_feedback(self, label: str) -> None:
        if not self.last_prediction:
            return
        stored = self.call(self.client.feedback, self.last_prediction["prediction_id"], label)
        if stored:
            verdict = "the prediction was right" if stored["correct"] else "noted as a mistake"
            self.feedback_text.object = (
                f"Feedback stored: true label **{label}** ({verdict}); {training_note(stored)}."
            )
