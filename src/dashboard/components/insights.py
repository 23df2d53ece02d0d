"""Insights: what the model learns from and what it sees, each figure with a sentence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn

from dashboard import charts
from dashboard.components.base import Component, table
from imgclf import figures
from imgclf.data import eda
from imgclf.loop.drift import DriftVerdict

DRIFT_COLUMNS = ["test", "training", "production", "statistic", "p-value", "drift"]


def drift_frame(report: dict) -> pd.DataFrame:
    """One row per drift test: the two means (features), the statistic, p-value, verdict."""
    rows = [
        (
            name,
            test.get("train_mean"),
            test.get("production_mean"),
            test["statistic"],
            test["p_value"],
            "yes" if test.get("drift") else "",
        )
        for name, test in report["features"].items()
    ]
    classes = report["predicted_classes"]
    rows.append(
        (
            "predicted classes",
            None,
            None,
            classes["statistic"],
            classes["p_value"],
            "yes" if classes.get("drift") else "",
        )
    )
    seen = report.get("model_features")
    if seen:  # the classifier two-sample test on the model's features: AUC as its statistic
        rows.append(
            (
                f"model's features (AUC, drift from {seen.get('auc_floor')})",
                seen.get("reference_count"),
                seen.get("production_count"),
                seen.get("auc"),
                seen.get("p_value"),
                "yes" if seen.get("drift") else "",
            )
        )
    return pd.DataFrame(rows, columns=DRIFT_COLUMNS).round(4)


def sample_gallery(samples: dict[str, list[str]]) -> pn.pane.HTML:
    """A few training images per class, enlarged with sharp pixels."""
    blocks = "".join(
        f"<div><b>{name}</b><br>"
        + "".join(
            f'<img src="{uri}" width="48" height="48" style="image-rendering:pixelated;'
            'margin:2px">'
            for uri in uris
        )
        + "</div>"
        for name, uris in samples.items()
    )
    return pn.pane.HTML(f'<div style="display:flex;flex-wrap:wrap;gap:12px">{blocks}</div>')


class InsightsView(Component):
    title = "Insights"

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.body = pn.Column()

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("### What the model learns from, and what it sees"), self.body
        )

    def _balance(self) -> list:
        summary = self.call(self.client.data_summary)
        if not summary:
            return []
        return [
            pn.pane.Markdown("#### Class distribution"),
            pn.pane.Bokeh(charts.bars({"training": summary["train"]}, "training images")),
            pn.pane.Markdown(eda.describe_balance(summary["train"])),
        ]

    def _brightness(self) -> list:
        brightness = self.call(self.client.brightness)
        if not brightness:
            return []
        bins = np.asarray(brightness["bins"])
        series = {"training": brightness["train"], "production": brightness["production"]}
        return [
            pn.pane.Markdown("#### Brightness: training images against production inputs"),
            pn.pane.Bokeh(charts.overlaid_histograms(bins, series, "mean brightness")),
        ]

    def _drift(self) -> list:
        report = self.call(self.client.drift)
        if not report:
            return []
        icon = {DriftVerdict.DRIFT: "⚠️ ", DriftVerdict.NO_DRIFT: "✅ "}.get(report["verdict"], "")
        panes = [
            pn.pane.Markdown("#### Drift: are production inputs like the training data?"),
            pn.pane.Markdown(f"{icon}**{report['verdict']}**: {report['message']}"),
        ]
        if report["verdict"] != DriftVerdict.NOT_ENOUGH_DATA:
            panes.append(table(drift_frame(report)))
        return panes

    def _samples(self) -> list:
        samples = self.call(self.client.samples, 6)
        if not samples or not samples["samples"]:
            return []
        return [
            pn.pane.Markdown("#### Sample training images per class"),
            sample_gallery(samples["samples"]),
            pn.pane.Markdown("Check that labels are right and classes are visually distinct."),
        ]

    def _model(self) -> list:
        model = self.call(self.client.model)
        if not model:
            return []
        panes, metrics = [], model.get("test_metrics", {})
        names, history = model["class_names"], model.get("history")
        if "confusion_matrix" in metrics:
            matrix = metrics["confusion_matrix"]
            panes += [
                pn.pane.Markdown(f"#### Confusion matrix of {model['version']} (test set)"),
                pn.pane.Bokeh(charts.confusion_matrix(matrix, names), width=520),
                pn.pane.Markdown(figures.describe_confusion(matrix, names)),
            ]
        if history:
            panes += [
                pn.pane.Markdown(f"#### Training curves of {model['version']}"),
                pn.Row(
                    *(
                        pn.pane.Bokeh(charts.training_curves(history, key))
                        for key in ("loss", "accuracy")
                    )
                ),
                pn.pane.Markdown(figures.describe_history(history)),
            ]
        return panes

    def refresh(self) -> None:
        panes = self._balance() + self._drift() + self._brightness() + self._samples()
        panes += self._model()
        self.body.objects = panes or [pn.pane.Markdown("The API gave nothing to show yet.")]
