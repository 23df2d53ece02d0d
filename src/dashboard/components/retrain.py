"""Retrain: start a job, follow it epoch by epoch, see the gate's decision; versions, rollback."""

from __future__ import annotations

import pandas as pd
import panel as pn

from dashboard.client import ApiError
from dashboard.components.base import Component, clock, table
from imgclf.store import LIVE_STATES, JobState

JOB_COLUMNS = ["job", "state", "started", "version", "report"]
VERSION_COLUMNS = ["version", "current", "accuracy", "macro F1", "parent", "gate"]


def job_text(job: dict, base_url: str) -> str:
    """A job's state, stage and epoch; the gate's decision with both scores once it ended."""
    progress, result = job["progress"], job.get("result") or {}
    epoch = f" · epoch {progress['epoch']}/{progress['epochs']}" if progress.get("epoch") else ""
    text = f"Job `{job['id']}`: **{job['state']}** · {progress.get('stage')}{epoch}"
    if job["state"] in (JobState.PROMOTED, JobState.REJECTED):
        current = result.get("current")
        against = f"{current:.4f}" if isinstance(current, float) else "none"
        text += (
            f"\n\n**{job['state'].upper()}**: {result.get('reason', '')}  \n"
            f"candidate {result.get('metric', 'f1_macro')} {result.get('candidate', 0):.4f} "
            f"against current {against} · new version **{result.get('version')}**"
        )
    if job["state"] == JobState.FAILED:
        text += f"\n\n**FAILED**: {job.get('error')}"
    if job.get("report"):
        text += f" · [report]({base_url}{job['report']})"
    return text


def jobs_frame(jobs: list[dict], base_url: str) -> pd.DataFrame:
    rows = [
        (
            job["id"],
            job["state"],
            clock(job["created_at"]),
            (job.get("result") or {}).get("version", ""),
            f'<a href="{base_url}{job["report"]}" target="_blank">report</a>'
            if job.get("report")
            else "",
        )
        for job in jobs[:15]
    ]
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def versions_frame(models: dict) -> pd.DataFrame:
    rows = [
        (
            v["version"],
            "✓" if v["version"] == models["current"] else "",
            v["accuracy"],
            v["f1_macro"],
            v.get("parent_version") or "",
            (v.get("gate") or {}).get("reason", ""),
        )
        for v in reversed(models["versions"])
    ]
    return pd.DataFrame(rows, columns=VERSION_COLUMNS).round(4)


class RetrainView(Component):
    title = "Retrain"

    def __init__(self, client, notices, **params):
        super().__init__(client, notices, **params)
        self.job_id: str | None = None
        self.token_input = pn.widgets.PasswordInput(
            name="Admin token",
            placeholder="configured" if client.token else "IMGCLF_ADMIN_TOKEN",
            visible=not client.token,
        )
        self.epochs_input = pn.widgets.IntInput(name="Epochs", value=10, start=1, end=200)
        self.retrain_button = pn.widgets.Button(name="Retrain now", button_type="success")
        self.retrain_button.on_click(self.on_retrain)
        self.rollback_button = pn.widgets.Button(name="Roll back", button_type="warning")
        self.rollback_button.on_click(self.on_rollback)
        self.progress = pn.indicators.Progress(value=0, max=100, visible=False)
        self.job_text = pn.pane.Markdown("No retrain job started from this page yet.")
        self.job_log = pn.pane.Str("", styles={"font-size": "11px"}, max_height=220)
        self.jobs = table(pd.DataFrame(columns=JOB_COLUMNS), formatters={"report": "html"})
        self.versions = table(pd.DataFrame(columns=VERSION_COLUMNS))

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown(
                "### Retrain on training data plus uploads\nThe candidate is promoted only if "
                "it is not worse than the current model on the same test set."
            ),
            pn.Row(self.token_input, self.epochs_input, self.retrain_button, self.rollback_button),
            self.progress,
            self.job_text,
            self.job_log,
            pn.pane.Markdown("### Jobs"),
            self.jobs,
            pn.pane.Markdown("### Model versions"),
            self.versions,
        )

    def _use_token(self) -> None:
        self.client.token = self.token_input.value or self.client.token

    def on_retrain(self, _=None) -> None:
        self._use_token()
        try:
            job = self.client.retrain({"epochs": int(self.epochs_input.value)})
        except ApiError as error:
            if error.status != 409 or "job" not in error.body:
                self.notices.show(error)
                return
            job = error.body["job"]  # one is already running: follow that one
        self.job_id = job["id"]
        self.progress.visible = True
        self.follow_job()

    def on_rollback(self, _=None) -> None:
        self._use_token()
        pointer = self.call(self.client.rollback)
        if pointer:
            self.job_text.object = f"Rolled back: **{pointer['version']}** is current again."
            self.refresh()

    def follow_job(self) -> None:
        """Show the followed job's progress; once it ended, stop following and refresh."""
        if not self.job_id:
            return
        job = self.call(self.client.job, self.job_id)
        if job is None:
            return
        self.progress.value = int(100 * (job["progress"].get("fraction") or 0))
        self.job_text.object = job_text(job, self.client.base_url)
        self.job_log.object = "\n".join(job.get("log_tail", [])[-12:])
        if job["state"] not in LIVE_STATES:
            self.job_id = None
            self.progress.value = 100
            self.refresh()

    def refresh(self) -> None:
        jobs = self.call(self.client.jobs)
        if jobs is not None:
            self.jobs.value = jobs_frame(jobs, self.client.base_url)
        models = self.call(self.client.models)
        if models is not None:
            self.versions.value = versions_frame(models)
