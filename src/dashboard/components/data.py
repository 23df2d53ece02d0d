"""Data: bulk upload of labelled images (files + label, or a zip), images per class, the issues
found in the data (``components.issues``) and the curation of uploads (``components.curation``)."""

from __future__ import annotations

import pandas as pd
import panel as pn

from dashboard import charts
from dashboard.components.base import Component, table
from dashboard.components.curation import CurationView
from dashboard.components.issues import IssuesView

OUTCOME_COLUMNS = ["file", "label", "outcome", "detail"]


def outcome_rows(report: dict) -> pd.DataFrame:
    """One row per uploaded file: accepted (where stored), duplicate (of what), rejected (why)."""
    rows = [(r["file"], r["label"], "accepted", r["stored_as"]) for r in report["accepted"]]
    rows += [(r["file"], r["label"], "duplicate", r["duplicate_of"]) for r in report["duplicates"]]
    rows += [(r["file"], r["label"], "rejected", r["reason"]) for r in report["rejected"]]
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


class DataView(Component):
    title = "Data"

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.files_input = pn.widgets.FileInput(accept="image/*", multiple=True, label="Images")
        self.label_input = pn.widgets.TextInput(label="Label (class) of these images")
        self.upload_button = pn.widgets.Button(label="Upload images", color="primary")
        self.upload_button.on_click(self.on_upload_files)
        self.zip_input = pn.widgets.FileInput(accept=".zip", label="Zip of <class>/<image>")
        self.zip_button = pn.widgets.Button(label="Upload zip", color="primary")
        self.zip_button.on_click(self.on_upload_zip)
        self.result = pn.pane.Markdown("")
        self.outcomes = table(pd.DataFrame(columns=OUTCOME_COLUMNS), height=220)
        self.distribution = pn.Column()
        self.issues = IssuesView(state, on_change=self.refresh)
        self.curation = CurationView(state, on_change=self.refresh)

    def __panel__(self):
        files = pn.Column(
            "**Many files, one label**", self.files_input, self.label_input, self.upload_button
        )
        archive = pn.Column(
            "**Or a zip with one folder per class**", self.zip_input, self.zip_button
        )
        return pn.Column(
            pn.pane.Markdown("### Bulk upload of labelled images"),
            pn.Row(files, archive),
            self.result,
            self.outcomes,
            pn.pane.Markdown(
                "### Images per class: training set and uploads waiting for a retrain"
            ),
            self.distribution,
            self.issues,
            self.curation,
        )

    def show_upload(self, report: dict | None) -> None:
        if report is None:
            return
        counts = report["counts"]
        batch = f" · batch `{report['batch']}`" if report.get("batch") else ""
        self.result.object = (
            f"**{counts['accepted']} accepted, {counts['duplicate']} duplicate, "
            f"{counts['rejected']} rejected**{batch}"
        )
        self.outcomes.value = outcome_rows(report)
        self.refresh()

    def on_upload_files(self, _=None) -> None:
        values, names = self.files_input.value or [], self.files_input.filename or []
        if isinstance(values, bytes):
            values, names = [values], [names]
        if not values:
            self.result.object = "Choose one or more image files first."
            return
        files = list(zip(names, values, strict=True))
        self.show_upload(self.call(self.client.upload_files, files, self.label_input.value))

    def on_upload_zip(self, _=None) -> None:
        if not self.zip_input.value:
            self.result.object = "Choose a zip file first."
            return
        name = self.zip_input.filename or "data.zip"
        self.show_upload(self.call(self.client.upload_zip, name, self.zip_input.value))

    def refresh(self) -> None:
        summary = self.call(self.client.data_summary)
        if summary is None:
            return
        counts = {"training": summary["train"]}
        if summary["uploads"]:
            counts["uploads (pending)"] = summary["uploads"]
        self.distribution.objects = [pn.pane.Bokeh(charts.bars(counts, "images per class"))]
        self.issues.classes = sorted({*summary["train"], *summary["uploads"]})
        self.issues.refresh()
        self.curation.refresh()
