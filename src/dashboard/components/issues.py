"""Issues found in the data (part of the Data tab): what the audit of the uploads and the scan
of all the data found (``GET /data/issues``), each uploaded image with its thumbnail and a
one-click accept of the suggested label, a relabel to any class or a delete, behind the same
confirmation as the curation of classes and batches (``curation.Confirmation``).

Images of ``data/train`` (a scan's findings) and leaks (uploads held out, never stored) are
listed read-only: the API curates uploads only.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable

import pandas as pd
import panel as pn

from dashboard.client import ApiError
from dashboard.components.base import Component, table
from dashboard.components.curation import Confirmation
from imgclf.store.jobstates import LIVE_STATES

#: Rows shown per list (the most suspect first); thumbnails are fetched for these only.
MAX_ROWS = 25
THUMBNAIL_PX = 64
LEAK_COLUMNS = ["file", "batch", "label", "test file", "similarity"]
TRAIN_COLUMNS = ["image", "label", "suggested label", "score"]


def leaks_frame(leaks: list[dict]) -> pd.DataFrame:
    rows = [
        (
            row.get("stored_as") or row["file"],
            row.get("batch") or "data/train",
            row["label"],
            row["test_file"],
            round(row["similarity"], 3),
        )
        for row in leaks
    ]
    return pd.DataFrame(rows, columns=LEAK_COLUMNS)


def training_frame(issues: list[dict]) -> pd.DataFrame:
    """Label issues of ``data/train`` (a scan's): not curated through the API."""
    rows = [
        (row["stored_as"], row["label"], row["suggested_label"], round(row["score"], 3))
        for row in issues
    ]
    return pd.DataFrame(rows, columns=TRAIN_COLUMNS)


def summary_text(found: dict) -> str:
    """Which model judged the data and when, how much it found, and what it did not judge."""
    if found["state"] == "running":
        head = "A check is **running** (an upload's labels, or a scan): reload in a moment."
    elif found.get("model_version"):
        when = (found.get("computed_at") or "").replace("T", " ").replace("+00:00", " UTC")
        head = f"Checked with model **{found['model_version']}** {when}".rstrip() + "."
    else:
        head = "No label check has run yet: upload images, or scan all the data."
    conflicts = sum(1 for row in found["near_duplicates"] if row.get("conflict"))
    counts = (
        f"{len(found['label_issues'])} label issue(s), {len(found['outliers'])} outlier(s), "
        f"{conflicts} near-duplicate(s) under another label, {len(found['leaks'])} leak(s)."
    )
    notes = "".join(f"  \n_{shown(note)}_" for note in found.get("notes") or [])
    return f"{head} {counts}{notes}"


def shown(text) -> str:
    """Text from the data (an uploaded file's name is anyone's choice) made inert in Markdown:
    HTML escaped, and no backtick, star or underscore to open a span."""
    escaped = html.escape(str(text), quote=False)
    return "".join(f"&#{ord(c)};" if c in "`*_[]\\" else c for c in escaped)


def code(text) -> str:
    return f"<code>{shown(text)}</code>"


def scan_text(job: dict | None) -> str:
    if job is None:
        return ""
    stage = (job.get("progress") or {}).get("stage")
    text = f"Scan `{job['id']}`: **{job['state']}**" + (f" · {stage}" if stage else "")
    if job.get("error"):
        text += f" · {shown(job['error'])}"
    return text


class IssuesView(Component):
    """Label issues, outliers and near-duplicates under another label of the uploads, each
    with its actions; leaks and the training set's issues read-only; a scan of all the data."""

    title = "Issues"

    def __init__(self, state, on_change: Callable[[], None] | None = None, **params):
        super().__init__(state, **params)
        #: called after a change (the Data tab refreshes its chart too); default: ``refresh``
        self.on_change = on_change or self.refresh
        #: the classes a relabel offers (the Data tab sets them from ``/data/summary``)
        self.classes: list[str] = []
        self.thumbnails: dict[str, str] = {}
        self.scan_button = pn.widgets.Button(label="Scan all data", color="primary")
        self.scan_button.on_click(self.on_scan)
        self.reload_button = pn.widgets.Button(label="Reload the issues", color="default")
        self.reload_button.on_click(lambda _: self.refresh())
        self.scan_status = pn.pane.Markdown("")
        self.summary = pn.pane.Markdown("")
        self.result = pn.pane.Markdown("")
        self.confirmation = Confirmation(state, self.result, lambda: self.on_change())
        self.label_issues = pn.Column(scroll=True, max_height=480)
        self.outliers = pn.Column(scroll=True, max_height=360)
        self.conflicts = pn.Column(scroll=True, max_height=360)
        self.training = table(pd.DataFrame(columns=TRAIN_COLUMNS), height=160)
        self.leaks = table(pd.DataFrame(columns=LEAK_COLUMNS), height=160)
        state.param.watch(self._show_scan, "scan")

    def __panel__(self):
        heading = pn.pane.Markdown
        return pn.Column(
            heading("### Issues found in the data (admin)"),
            pn.Row(self.scan_button, self.reload_button, self.scan_status),
            self.summary,
            self.confirmation,
            self.result,
            heading("#### Label issues: uploads whose label the model's features do not support"),
            self.label_issues,
            heading("#### Outliers: uploads unlike every class"),
            self.outliers,
            heading("#### Near-duplicates of an image under another label"),
            self.conflicts,
            heading("#### Label issues in data/train (read-only: move the files by hand)"),
            self.training,
            heading("#### Leaks: near-copies of test images (read-only; uploads were held out)"),
            self.leaks,
        )

    def refresh(self) -> None:
        if not self.state.token:
            self.summary.object = (
                "Enter the admin token (Retrain tab) to see the issues found in the data."
            )
            return
        found = self.call(self.client.data_issues)
        if found is None:
            return
        self.show(found)
        scan = found.get("scan")
        if scan is not None and scan["id"] != self.state.scan_id:
            self.state.follow_scan(scan)

    def show(self, found: dict) -> None:
        """Fill the lists from ``GET /data/issues``."""
        self.summary.object = summary_text(found)
        uploaded = [row for row in found["label_issues"] if row.get("batch")]
        trained = [row for row in found["label_issues"] if not row.get("batch")]
        self.label_issues.objects = self._rows(
            sorted(uploaded, key=lambda row: row["score"]),
            lambda row: (
                f"suggested **{shown(row['suggested_label'])}** · score {row['score']:.3f}"
            ),
            lambda row: row["suggested_label"],
        )
        self.outliers.objects = self._rows(
            sorted(found["outliers"], key=lambda row: -row["unknown_score"]),
            lambda row: f"unknown score {row['unknown_score']:.2f}",
            lambda row: None,
        )
        conflicts = [row for row in found["near_duplicates"] if row.get("conflict")]
        self.conflicts.objects = self._rows(
            conflicts,
            lambda row: (
                f"copies {code(row['duplicate_of'])} labelled **{shown(row['duplicate_label'])}** "
                f"(similarity {row['similarity']:.3f})"
            ),
            lambda row: row.get("duplicate_label"),
        )
        self.training.value = training_frame(trained)
        self.leaks.value = leaks_frame(found["leaks"])

    def _rows(self, rows: list[dict], detail, suggestion) -> list:
        if not rows:
            return [pn.pane.Markdown("None.")]
        shown = [self.issue_row(row, detail(row), suggestion(row)) for row in rows[:MAX_ROWS]]
        if len(rows) > MAX_ROWS:
            more = f"... and {len(rows) - MAX_ROWS} more: act on these first, then reload."
            shown.append(pn.pane.Markdown(more))
        return shown

    def issue_row(self, row: dict, detail: str, suggestion: str | None) -> pn.Row:
        """One uploaded image: thumbnail, name, batch, given label, what is wrong, actions."""
        text = pn.pane.Markdown(
            f"{code(row['file'])} · batch {code(row['batch'])}  \n"
            f"given **{shown(row['label'])}** · {detail}",
            width=330,
        )
        others = sorted({*self.classes, row["label"], suggestion or row["label"]})
        others.remove(row["label"])
        menu = pn.widgets.Select(
            options=others, value=suggestion if suggestion in others else None, width=110
        )
        relabel = pn.widgets.Button(label="Relabel", color="primary", width=80)
        relabel.on_click(lambda _: self.ask_relabel(row, menu.value))
        delete = pn.widgets.Button(label="Delete", color="danger", width=70)
        delete.on_click(lambda _: self.ask_delete(row))
        actions = [menu, relabel, delete]
        if suggestion and suggestion != row["label"]:
            accept = pn.widgets.Button(label=f"Accept '{suggestion}'", color="success", width=120)
            accept.on_click(lambda _: self.ask_relabel(row, suggestion, "the suggestion"))
            actions.insert(0, accept)
        return pn.Row(self.thumbnail(row["stored_as"]), text, *actions, name=row["stored_as"])

    def thumbnail(self, stored_as: str) -> pn.pane.HTML:
        """The uploaded image as the API draws it (cached by ``stored_as``: a content hash)."""
        if stored_as not in self.thumbnails:
            try:
                png = self.client.upload_file_thumbnail(stored_as, THUMBNAIL_PX)
            except ApiError:  # gone meanwhile, or the API is away: the row still shows
                return pn.pane.HTML("(no image)", width=THUMBNAIL_PX + 12)
            self.thumbnails[stored_as] = base64.b64encode(png).decode()
        return pn.pane.HTML(
            f'<img src="data:image/png;base64,{self.thumbnails[stored_as]}" '
            f'width="{THUMBNAIL_PX}" height="{THUMBNAIL_PX}" '
            'style="image-rendering:pixelated;object-fit:contain;border:1px solid #ccc">',
            width=THUMBNAIL_PX + 12,
        )

    def ask_relabel(self, row: dict, label: str | None, why: str = "") -> None:
        if not label:
            self.result.object = "Choose the class to relabel it to first."
            return
        because = f" ({why})" if why else ""
        self.confirmation.ask(
            f"Relabel {code(row['file'])} (batch {code(row['batch'])}) from "
            f"**{shown(row['label'])}** to **{shown(label)}**{because}?",
            lambda: self.client.relabel_upload_file(row["stored_as"], label),
        )

    def ask_delete(self, row: dict) -> None:
        self.confirmation.ask(
            f"Delete {code(row['file'])} (batch {code(row['batch'])}, labelled "
            f"**{shown(row['label'])}**) "
            "from the uploads?",
            lambda: self.client.delete_upload_file(row["stored_as"]),
        )

    def on_scan(self, _=None) -> None:
        try:
            job = self.client.scan_data()
        except ApiError as error:
            if error.status != 409 or not error.body.get("job"):
                self.notices.show(error)  # no model served, no token, the API away
                return
            job = error.body["job"]  # one is live already: follow that one
        self.state.follow_scan(job)

    def _show_scan(self, event) -> None:
        """The followed scan as the last poll found it; once it has ended, its findings."""
        self.scan_status.object = scan_text(event.new)
        ended = event.new is not None and event.new["state"] not in LIVE_STATES
        if ended and (event.old is None or event.old["state"] in LIVE_STATES):
            self.on_change()
