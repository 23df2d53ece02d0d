"""The dashboard: predict, upload data, retrain and watch the model in production.

``panel serve dashboard/app.py`` (``make dashboard``; ``make run`` starts it with the API).
A client of the REST API only (``IMGCLF_API_URL``, default http://127.0.0.1:8000): everything it
shows comes from the API, and when the API is down or slow it says so and keeps running.
"""

from __future__ import annotations

import io
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import panel as pn  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `panel serve` runs the file
from dashboard.client import ApiClient, ApiError  # noqa: E402
from imgclf import eda, evaluation  # noqa: E402

pn.extension("tabulator", sizing_mode="stretch_width", notifications=True)
REFRESH_MS = int(os.environ.get("IMGCLF_DASHBOARD_REFRESH_MS", "5000"))


def figure_pane(figure, height=320):
    pane = pn.pane.Matplotlib(figure, dpi=90, tight=True, height=height, format="png")
    plt.close(figure)
    return pane


def _empty_figure(text: str):
    figure, axis = plt.subplots(figsize=(6, 2.5))
    axis.text(0.5, 0.5, text, ha="center", va="center", color="grey")
    axis.set_axis_off()
    return figure


class Dashboard:
    def __init__(self, client: ApiClient | None = None):
        self.client = client or ApiClient()
        self.banner = pn.pane.Alert("", alert_type="danger", visible=False)
        self.header = pn.pane.Markdown("")
        self.last_prediction: dict | None = None
        self.job_id: str | None = None
        self._build_predict()
        self._build_data()
        self._build_retrain()
        self._build_monitor()
        self._build_insights()
        self.tabs = pn.Tabs(
            ("Predict", self.predict_tab),
            ("Data", self.data_tab),
            ("Retrain", self.retrain_tab),
            ("Monitor", self.monitor_tab),
            ("Insights", self.insights_tab),
            dynamic=False,
        )
        self.layout = pn.Column(
            pn.pane.Markdown("# imgclf: image classifier dashboard"),
            self.header,
            self.banner,
            self.tabs,
            sizing_mode="stretch_width",
        )

    # ------------------------------------------------------------------------ plumbing
    def call(self, function, *args, **kwargs):
        """Call the API; on failure show the reason in the banner and return None."""
        try:
            result = function(*args, **kwargs)
        except ApiError as error:
            self.banner.object = f"**{error}**"
            self.banner.visible = True
            return None
        if self.banner.visible and self.banner.object.startswith("**the API at"):
            self.banner.visible = False
        return result

    def refresh_header(self):
        health = self.call(self.client.health)
        if health is None:
            self.header.object = f"API: **unreachable** at {self.client.base_url}"
            return
        self.banner.visible = False
        uptime = int(health["uptime_s"])
        self.header.object = (
            f"API: **{health['status']}** at {self.client.base_url} · model "
            f"**{health['model_version'] or 'none'}** · up {uptime // 3600} h "
            f"{uptime % 3600 // 60} min · [API docs]({self.client.base_url}/docs) · "
            f"[reports]({self.client.base_url}/reports/)"
        )

    # ------------------------------------------------------------------------- predict
    def _build_predict(self):
        self.image_input = pn.widgets.FileInput(accept="image/*", name="Image")
        self.image_input.param.watch(self.on_image, "value")
        self.preview = pn.pane.PNG(None, height=220, width=220)
        self.prediction_text = pn.pane.Markdown("Upload or drop an image to classify it.")
        self.probabilities = pn.Column()
        self.feedback_buttons = pn.FlexBox()
        self.feedback_text = pn.pane.Markdown("")
        self.predict_tab = pn.Column(
            pn.pane.Markdown("### Predict\nChoose an image file (PNG, JPEG, ...)."),
            self.image_input,
            pn.Row(self.preview, pn.Column(self.prediction_text, self.probabilities)),
            pn.pane.Markdown("**Wrong? This image is actually:** (one click stores it)"),
            self.feedback_buttons,
            self.feedback_text,
        )

    def on_image(self, event):
        payload = event.new
        if not payload:
            return
        try:
            image = Image.open(io.BytesIO(payload))
            image.thumbnail((220, 220))
            if max(image.size) < 120:
                factor = 220 // max(image.size)
                image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            self.preview.object = buffer.getvalue()
        except Exception:
            self.preview.object = None
        result = self.call(self.client.predict, payload, self.image_input.filename or "image")
        if result is None:
            self.prediction_text.object = "Prediction failed: see the message above."
            return
        self.last_prediction = result
        self.prediction_text.object = (
            f"## Predicted: **{result['label']}**\nconfidence {result['confidence']:.1%} · "
            f"model {result['model_version']} · {result['latency_ms']:.0f} ms · id "
            f"`{result['prediction_id'][:8]}`"
        )
        names = list(result["probabilities"])
        values = [result["probabilities"][n] for n in names]
        figure, axis = plt.subplots(figsize=(6, max(2.0, 0.3 * len(names))))
        colours = ["tab:orange" if n == result["label"] else "tab:blue" for n in names]
        axis.barh(names, values, color=colours)
        axis.set_xlim(0, 1)
        axis.invert_yaxis()
        axis.set_xlabel("probability")
        self.probabilities.objects = [figure_pane(figure, height=260)]
        buttons = []
        for name in names:
            button = pn.widgets.Button(name=name, button_type="light", width=90)
            button.on_click(lambda _, label=name: self.send_feedback(label))
            buttons.append(button)
        self.feedback_buttons.objects = buttons
        self.feedback_text.object = ""

    def send_feedback(self, label: str):
        if not self.last_prediction:
            return
        stored = self.call(self.client.feedback, self.last_prediction["prediction_id"], label)
        if stored:
            verdict = "the prediction was right" if stored["correct"] else "noted as a mistake"
            self.feedback_text.object = f"Feedback stored: true label **{label}** ({verdict})."

    # ---------------------------------------------------------------------------- data
    def _build_data(self):
        self.files_input = pn.widgets.FileInput(accept="image/*", multiple=True, name="Images")
        self.label_input = pn.widgets.TextInput(name="Label (class) of these images")
        self.upload_button = pn.widgets.Button(name="Upload images", button_type="primary")
        self.upload_button.on_click(self.on_upload_files)
        self.zip_input = pn.widgets.FileInput(accept=".zip", name="Zip of <class>/<image>")
        self.zip_button = pn.widgets.Button(name="Upload zip", button_type="primary")
        self.zip_button.on_click(self.on_upload_zip)
        self.upload_result = pn.pane.Markdown("")
        self.upload_table = pn.widgets.Tabulator(
            pd.DataFrame(columns=["file", "label", "outcome", "detail"]),
            height=220,
            disabled=True,
            show_index=False,
        )
        self.distribution = pn.Column()
        self.data_tab = pn.Column(
            pn.pane.Markdown("### Bulk upload of labelled images"),
            pn.Row(
                pn.Column(
                    "**Many files, one label**",
                    self.files_input,
                    self.label_input,
                    self.upload_button,
                ),
                pn.Column(
                    "**Or a zip with one folder per class**", self.zip_input, self.zip_button
                ),
            ),
            self.upload_result,
            self.upload_table,
            pn.pane.Markdown(
                "### Images per class: training set and uploads waiting for a retrain"
            ),
            self.distribution,
        )

    def show_upload(self, report: dict | None):
        if report is None:
            return
        counts = report["counts"]
        self.upload_result.object = (
            f"**{counts['accepted']} accepted, {counts['duplicate']} duplicate, "
            f"{counts['rejected']} rejected**"
            + (f" · batch `{report['batch']}`" if report.get("batch") else "")
        )
        rows = [(r["file"], r["label"], "accepted", r["stored_as"]) for r in report["accepted"]]
        rows += [
            (r["file"], r["label"], "duplicate", r["duplicate_of"]) for r in report["duplicates"]
        ]
        rows += [(r["file"], r["label"], "rejected", r["reason"]) for r in report["rejected"]]
        self.upload_table.value = pd.DataFrame(
            rows, columns=["file", "label", "outcome", "detail"]
        )
        self.refresh_distribution()

    def on_upload_files(self, _=None):
        values = self.files_input.value or []
        names = self.files_input.filename or []
        if isinstance(values, bytes):
            values, names = [values], [names]
        if not values:
            self.upload_result.object = "Choose one or more image files first."
            return
        self.client.token = self.token_input.value or self.client.token
        files = list(zip(names, values, strict=True))
        self.show_upload(self.call(self.client.upload_files, files, self.label_input.value))

    def on_upload_zip(self, _=None):
        if not self.zip_input.value:
            self.upload_result.object = "Choose a zip file first."
            return
        self.client.token = self.token_input.value or self.client.token
        self.show_upload(
            self.call(
                self.client.upload_zip, self.zip_input.filename or "data.zip", self.zip_input.value
            )
        )

    def refresh_distribution(self):
        summary = self.call(self.client.data_summary)
        if summary is None:
            return
        counts = {"training": summary["train"]}
        if summary["uploads"]:
            counts["uploads (pending)"] = summary["uploads"]
        self.distribution.objects = [
            figure_pane(evaluation.plot_class_distribution(counts), height=300)
        ]

    # ------------------------------------------------------------------------- retrain
    def _build_retrain(self):
        configured = bool(self.client.token)
        self.token_input = pn.widgets.PasswordInput(
            name="Admin token",
            placeholder="configured" if configured else "IMGCLF_ADMIN_TOKEN",
            visible=not configured,
        )
        self.epochs_input = pn.widgets.IntInput(name="Epochs", value=10, start=1, end=200)
        self.retrain_button = pn.widgets.Button(name="Retrain now", button_type="success")
        self.retrain_button.on_click(self.on_retrain)
        self.rollback_button = pn.widgets.Button(name="Roll back", button_type="warning")
        self.rollback_button.on_click(self.on_rollback)
        self.progress = pn.indicators.Progress(value=0, max=100, visible=False)
        self.job_text = pn.pane.Markdown("No retrain job started from this page yet.")
        self.job_log = pn.pane.Str("", styles={"font-size": "11px"}, max_height=220)
        self.jobs_table = pn.pane.HTML("")
        self.versions_table = pn.pane.HTML("")
        self.retrain_tab = pn.Column(
            pn.pane.Markdown(
                "### Retrain on training data plus uploads\nThe candidate is "
                "promoted only if it is not worse than the current model on the "
                "same test set."
            ),
            pn.Row(self.token_input, self.epochs_input, self.retrain_button, self.rollback_button),
            self.progress,
            self.job_text,
            self.job_log,
            pn.pane.Markdown("### Jobs"),
            self.jobs_table,
            pn.pane.Markdown("### Model versions"),
            self.versions_table,
        )

    def on_retrain(self, _=None):
        self.client.token = self.token_input.value or self.client.token
        job = self.call(self.client.retrain, {"epochs": int(self.epochs_input.value)})
        if job is None:
            error = self.banner.object
            if "already" in error:
                self.banner.visible = False
                jobs = self.call(self.client.jobs) or []
                live = [j for j in jobs if j["state"] in ("queued", "running")]
                self.job_id = live[0]["id"] if live else None
            else:
                return
        else:
            self.job_id = job["id"]
        self.progress.visible = True
        self.refresh_job()

    def on_rollback(self, _=None):
        self.client.token = self.token_input.value or self.client.token
        pointer = self.call(self.client.rollback)
        if pointer:
            self.job_text.object = f"Rolled back: **{pointer['version']}** is current again."
            self.refresh_versions()

    def refresh_job(self):
        if not self.job_id:
            return
        job = self.call(self.client.job, self.job_id)
        if job is None:
            return
        progress = job["progress"]
        self.progress.value = int(100 * (progress.get("fraction") or 0))
        epoch = (
            f" · epoch {progress['epoch']}/{progress['epochs']}" if progress.get("epoch") else ""
        )
        text = f"Job `{job['id']}`: **{job['state']}** · {progress.get('stage')}{epoch}"
        result = job.get("result") or {}
        if job["state"] in ("promoted", "rejected"):
            text += (
                f"\n\n**{job['state'].upper()}**: {result.get('reason', '')}  \n"
                f"candidate {result.get('metric', 'f1_macro')} "
                f"{result.get('candidate', float('nan')):.4f} against current "
                f"{result.get('current', float('nan')):.4f} · new version "
                f"**{result.get('version')}**"
            )
        if job["state"] == "failed":
            text += f"\n\n**FAILED**: {job.get('error')}"
        if job.get("report"):
            text += f" · [report]({self.client.base_url}{job['report']})"
        self.job_text.object = text
        self.job_log.object = "\n".join(job.get("log_tail", [])[-12:])
        if job["state"] not in ("queued", "running"):
            self.job_id = None
            self.progress.value = 100
            self.refresh_versions()

    def refresh_versions(self):
        jobs = self.call(self.client.jobs)
        if jobs is not None:
            rows = "".join(
                f"<tr><td>{j['id']}</td><td>{j['state']}</td>"
                f"<td>{_time(j['created_at'])}</td>"
                f"<td>{(j.get('result') or {}).get('version', '')}</td>"
                f"<td>{_link(self.client.base_url, j.get('report'))}</td></tr>"
                for j in jobs[:15]
            )
            self.jobs_table.object = _table(("job", "state", "started", "version", "report"), rows)
        models = self.call(self.client.models)
        if models is not None:
            rows = "".join(
                f"<tr><td>{'<b>' if v['version'] == models['current'] else ''}{v['version']}"
                f"{' (current)</b>' if v['version'] == models['current'] else ''}</td>"
                f"<td>{_number(v['accuracy'])}</td><td>{_number(v['f1_macro'])}</td>"
                f"<td>{v.get('parent_version') or ''}</td>"
                f"<td>{(v.get('gate') or {}).get('reason', '')}</td>"
                f"<td>{_link(self.client.base_url, v.get('report'))}</td></tr>"
                for v in reversed(models["versions"])
            )
            self.versions_table.object = _table(
                ("version", "accuracy", "macro F1", "parent", "gate", "report"), rows
            )

    # ------------------------------------------------------------------------- monitor
    def _build_monitor(self):
        self.indicators = pn.FlexBox()
        self.monitor_charts = pn.Column()
        self.monitor_tab = pn.Column(
            pn.pane.Markdown("### Production (refreshes every few seconds)"),
            self.indicators,
            self.monitor_charts,
        )

    def refresh_monitor(self):
        stats = self.call(self.client.stats)
        if stats is None:
            return
        model = self.call(self.client.model) or {}
        metrics = model.get("test_metrics", {})
        latency = stats["latency_ms"]
        uptime = stats["uptime_s"]

        def number(name, value, fmt="{:,.0f}"):
            shown = "-" if value is None else fmt.format(value)
            return pn.Column(pn.pane.Markdown(f"**{name}**\n\n## {shown}"), width=170)

        self.indicators.objects = [
            number("uptime", uptime / 60, "{:,.1f} min"),
            pn.Column(
                pn.pane.Markdown(f"**model**\n\n## {stats['model_version'] or '-'}"), width=170
            ),
            number("test accuracy", metrics.get("accuracy"), "{:.2%}"),
            number("predictions", stats["predictions"]),
            number("error rate", stats["error_rate"], "{:.1%}"),
            number("latency p50", latency["p50"], "{:.1f} ms"),
            number("latency p95", latency["p95"], "{:.1f} ms"),
            number("latency p99", latency["p99"], "{:.1f} ms"),
            number("feedback accuracy", stats["feedback"]["accuracy"], "{:.1%}"),
        ]
        points = stats["series"]["points"]
        figure, axes = plt.subplots(1, 3, figsize=(14, 3), layout="constrained")
        if points:
            times = [datetime.fromtimestamp(p["start"], UTC) for p in points]
            axes[0].bar(times, [p["requests"] for p in points], width=0.0006, label="requests")
            axes[0].bar(times, [p["errors"] for p in points], width=0.0006, label="errors")
            axes[0].legend(fontsize=8)
            axes[1].plot(times, [p["latency_p50_ms"] for p in points], "o-", label="p50")
            axes[1].plot(times, [p["latency_p95_ms"] for p in points], "o-", label="p95")
            axes[1].legend(fontsize=8)
            for axis in axes[:2]:
                axis.tick_params(axis="x", labelrotation=30, labelsize=7)
        axes[0].set_title("predictions per minute (last hour)")
        axes[1].set_title("latency per minute, ms")
        by_class = stats["by_class"]
        axes[2].bar(list(by_class), list(by_class.values()))
        axes[2].set_title("predictions by class")
        last = stats.get("last_retrain")
        retrain = (
            f"Last retrain: job `{last['id']}` **{last['state']}** at {_time(last['finished_at'])}"
            if last
            else "No retrain has run yet."
        )
        self.monitor_charts.objects = [figure_pane(figure, height=260), pn.pane.Markdown(retrain)]

    # ------------------------------------------------------------------------ insights
    def _build_insights(self):
        self.insights = pn.Column()
        self.insights_tab = pn.Column(
            pn.pane.Markdown("### What the model learns from, and what it sees"), self.insights
        )

    def refresh_insights(self):
        panes = []
        summary = self.call(self.client.data_summary)
        if summary:
            panes += [
                pn.pane.Markdown("#### Class distribution"),
                figure_pane(
                    evaluation.plot_class_distribution({"training": summary["train"]}), height=280
                ),
                pn.pane.Markdown(eda.describe_balance(summary["train"])),
            ]
        brightness = self.call(self.client.brightness)
        if brightness:
            bins = np.asarray(brightness["bins"])
            centres = (bins[:-1] + bins[1:]) / 2
            figure, axis = plt.subplots(figsize=(7, 3), layout="constrained")
            for name in ("train", "production"):
                counts = np.asarray(brightness[name], dtype=float)
                if counts.sum():
                    axis.bar(
                        centres,
                        counts / counts.sum(),
                        width=bins[1] - bins[0],
                        alpha=0.5,
                        label=name,
                    )
            axis.set_xlabel("mean brightness of the preprocessed image")
            axis.set_ylabel("share of images")
            axis.legend()
            train_values = np.repeat(centres, brightness["train"])
            production_values = np.repeat(centres, brightness["production"])
            panes += [
                pn.pane.Markdown("#### Brightness: training images against production inputs"),
                figure_pane(figure, height=260),
                pn.pane.Markdown(
                    eda.describe_drift(train_values, production_values, "brightness")
                ),
            ]
        samples = self.call(self.client.samples, 6)
        if samples and samples["samples"]:
            rows = "".join(
                f"<div><b>{name}</b><br>"
                + "".join(
                    f'<img src="{uri}" width="48" height="48" '
                    'style="image-rendering:pixelated;margin:2px">'
                    for uri in uris
                )
                + "</div>"
                for name, uris in samples["samples"].items()
            )
            panes += [
                pn.pane.Markdown("#### Sample training images per class"),
                pn.pane.HTML(f'<div style="display:flex;flex-wrap:wrap;gap:12px">{rows}</div>'),
                pn.pane.Markdown(
                    "What each class looks like to the model's data: check that "
                    "labels are right and classes are visually distinct."
                ),
            ]
        model = self.call(self.client.model)
        if model:
            metrics = model.get("test_metrics", {})
            if "confusion_matrix" in metrics:
                panes += [
                    pn.pane.Markdown(f"#### Confusion matrix of {model['version']} (test set)"),
                    figure_pane(
                        evaluation.plot_confusion_matrix(
                            metrics["confusion_matrix"], model["class_names"]
                        ),
                        height=420,
                    ),
                    pn.pane.Markdown(
                        evaluation.describe_confusion(
                            metrics["confusion_matrix"], model["class_names"]
                        )
                    ),
                ]
            if model.get("history"):
                panes += [
                    pn.pane.Markdown(f"#### Training curves of {model['version']}"),
                    figure_pane(evaluation.plot_history(model["history"]), height=300),
                    pn.pane.Markdown(evaluation.describe_history(model["history"])),
                ]
        self.insights.objects = panes or [pn.pane.Markdown("The API gave nothing to show yet.")]

    # ------------------------------------------------------------------------ schedule
    def refresh_all(self):
        self.refresh_header()
        self.refresh_distribution()
        self.refresh_versions()
        self.refresh_monitor()
        self.refresh_insights()

    def tick(self):
        self.refresh_header()
        if self.tabs.active == 3:
            self.refresh_monitor()

    def servable(self):
        pn.state.onload(self.refresh_all)
        pn.state.add_periodic_callback(self.tick, period=REFRESH_MS)
        pn.state.add_periodic_callback(self._fast_job_tick, period=1000)
        return self.layout.servable(title="imgclf dashboard")

    def _fast_job_tick(self):
        if self.job_id:
            self.refresh_job()


def _time(stamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""


def _link(base_url: str, path: str | None) -> str:
    return f'<a href="{base_url}{path}" target="_blank">report</a>' if path else ""


def _table(headers, rows: str) -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 10px'>{h}</th>" for h in headers)
    return f"<table style='font-size:13px;border-collapse:collapse'><tr>{head}</tr>{rows}</table>"


if __name__.startswith("bokeh"):
    Dashboard().servable()
