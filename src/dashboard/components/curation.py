"""Curation of uploads (part of the Data tab): list uploaded classes and batches, delete a
batch, delete or rename a class. Every change asks for a second click first (``Confirmation``,
also used by the list of issues for single images) and says what it did (``result_text``)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import panel as pn

from dashboard.components.base import Component, clock, table

CLASS_COLUMNS = ["class", "images", "train", "test", "batches"]
BATCH_COLUMNS = ["batch", "stored", "images", "train", "test", "classes"]
AUDIT_COLUMNS = ["when", "operation", "target", "new name", "outcome", "images", "by"]


def classes_frame(listing: dict) -> pd.DataFrame:
    rows = [
        (c["name"], c["images"], c["train"], c["test"], ", ".join(c["batches"]))
        for c in listing["classes"]
    ]
    return pd.DataFrame(rows, columns=CLASS_COLUMNS)


def batches_frame(listing: dict) -> pd.DataFrame:
    rows = [
        (
            b["id"],
            b["stored_at"].replace("T", " ").replace("+00:00", " UTC"),
            b["images"],
            b["train"],
            b["test"],
            ", ".join(f"{name} ({c['images']})" for name, c in b["classes"].items()),
        )
        for b in listing["batches"]
    ]
    return pd.DataFrame(rows, columns=BATCH_COLUMNS)


def audit_frame(entries: list[dict]) -> pd.DataFrame:
    """The latest curation operations; ``by`` is the token's fingerprint and the address."""
    rows = [
        (
            clock(e["created_at"]),
            e["operation"],
            e["target"],
            e.get("new_name") or "",
            e["outcome"],
            e.get("images") if e.get("images") is not None else "",
            f"{e.get('actor') or '?'} @ {e.get('client') or '?'}",
        )
        for e in entries
    ]
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)


def result_text(result: dict) -> str:
    """One line on what a curation did."""
    target, new_name = result["target"], result.get("new_name")
    what = {
        "delete-batch": f"Deleted batch `{target}`",
        "delete-class": f"Deleted class **{target}**",
        "rename-class": f"Renamed class **{target}** to **{new_name}**"
        + (" (merged into the existing class)" if result.get("merged") else ""),
        "delete-file": f"Deleted `{target}`",
        "relabel-file": f"Relabelled `{target}` as **{new_name}**",
    }[result["operation"]]
    removed = result.get("batches_removed") or []
    gone = f"; batch(es) left empty and removed: {', '.join(removed)}" if removed else ""
    return (
        f"{what}: {result['images']} image(s) ({result['train']} train, {result['test']} test) "
        f"in {len(result['batches'])} batch(es){gone}."
    )


class Confirmation(pn.viewable.Viewer):
    """A question with Confirm and Cancel: the curation asked for runs only on Confirm (a
    second click), through the state's safe call (a refusal shows in the banner); what it did
    goes to ``result`` (``result_text``), then ``on_done`` runs (a refresh)."""

    def __init__(self, state, result: pn.pane.Markdown, on_done: Callable[[], None], **params):
        super().__init__(**params)
        self.state, self.result, self.on_done = state, result, on_done
        self.text = pn.pane.Markdown("", visible=False)
        self.button = pn.widgets.Button(label="Confirm", color="danger", visible=False)
        self.cancel_button = pn.widgets.Button(label="Cancel", color="light", visible=False)
        self.pending: Callable[[], dict] | None = None
        self.button.on_click(self.confirm)
        self.cancel_button.on_click(self.cancel)

    def __panel__(self):
        return pn.Row(self.text, self.button, self.cancel_button)

    def ask(self, question: str, action: Callable[[], dict]) -> None:
        """Show the question with Confirm and Cancel; ``action`` runs only on Confirm."""
        self.pending = action
        self.text.object = question
        for widget in (self.text, self.button, self.cancel_button):
            widget.visible = True

    def cancel(self, _=None) -> None:
        self.pending = None
        for widget in (self.text, self.button, self.cancel_button):
            widget.visible = False

    def confirm(self, _=None) -> None:
        action = self.pending
        self.cancel()
        if action is None:
            return
        result = self.state.call(action)
        if result is not None:
            self.result.object = result_text(result)
            self.on_done()


class CurationView(Component):
    """Uploaded classes and batches with delete and rename actions behind a confirmation."""

    title = "Uploads"

    def __init__(self, state, on_change=None, **params):
        super().__init__(state, **params)
        #: called after a change (the Data tab refreshes its chart too); default: ``refresh``
        self.on_change = on_change or self.refresh
        self.classes = table(pd.DataFrame(columns=CLASS_COLUMNS), height=180)
        self.batches = table(pd.DataFrame(columns=BATCH_COLUMNS), height=180)
        self.class_select = pn.widgets.Select(label="Uploaded class", options=[])
        self.new_name = pn.widgets.TextInput(label="New name (an existing class: merge)")
        self.batch_select = pn.widgets.Select(label="Upload batch", options=[])
        self.delete_class_button = pn.widgets.Button(label="Delete class", color="danger")
        self.rename_button = pn.widgets.Button(label="Rename class", color="primary")
        self.delete_batch_button = pn.widgets.Button(label="Delete batch", color="danger")
        self.result = pn.pane.Markdown("")
        self.confirmation = Confirmation(state, self.result, lambda: self.on_change())
        self.confirm_text = self.confirmation.text
        self.confirm_button = self.confirmation.button
        self.cancel_button = self.confirmation.cancel_button
        self.audit = table(pd.DataFrame(columns=AUDIT_COLUMNS), height=160)
        self.delete_class_button.on_click(self.on_delete_class)
        self.rename_button.on_click(self.on_rename_class)
        self.delete_batch_button.on_click(self.on_delete_batch)

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("### Uploaded classes and batches (admin)"),
            pn.Row(self.classes, self.batches),
            pn.Row(
                pn.Column(self.class_select, self.delete_class_button),
                pn.Column(self.new_name, self.rename_button),
                pn.Column(self.batch_select, self.delete_batch_button),
            ),
            self.confirmation,
            self.result,
            pn.pane.Markdown("#### Latest changes (audit)"),
            self.audit,
        )

    def refresh(self) -> None:
        if not self.state.token:
            self.result.object = "Enter the admin token (Retrain tab) to see and curate uploads."
            return
        listing = self.call(self.client.uploads)
        if listing is None:
            return
        self.classes.value = classes_frame(listing)
        self.batches.value = batches_frame(listing)
        self.class_select.options = [c["name"] for c in listing["classes"]]
        self.batch_select.options = [b["id"] for b in listing["batches"]]
        trail = self.call(self.client.upload_audit, 10)
        if trail is not None:
            self.audit.value = audit_frame(trail)

    def _ask(self, question: str, action: Callable[[], dict]) -> None:
        self.confirmation.ask(question, action)

    def on_delete_class(self, _=None) -> None:
        name = self.class_select.value
        if not name:
            self.result.object = "Choose an uploaded class first."
            return
        self._ask(
            f"Delete every uploaded image of class **{name}**, in every batch?",
            lambda: self.client.delete_upload_class(name),
        )

    def on_rename_class(self, _=None) -> None:
        name, new_name = self.class_select.value, self.new_name.value.strip()
        if not name or not new_name:
            self.result.object = "Choose an uploaded class and type its new name first."
            return
        merge = new_name in (self.class_select.options or [])
        self._ask(
            f"{'Merge' if merge else 'Rename'} class **{name}** into **{new_name}**?",
            lambda: self.client.rename_upload_class(name, new_name),
        )

    def on_delete_batch(self, _=None) -> None:
        batch = self.batch_select.value
        if not batch:
            self.result.object = "Choose an upload batch first."
            return
        self._ask(
            f"Delete upload batch `{batch}` (its images and manifest)?",
            lambda: self.client.delete_upload_batch(batch),
        )

    def on_cancel(self, _=None) -> None:
        self.confirmation.cancel()

    def on_confirm(self, _=None) -> None:
        self.confirmation.confirm()
