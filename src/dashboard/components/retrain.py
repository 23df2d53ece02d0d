"""Retrain: start a job, follow it epoch by epoch, see the gate's decision; versions, rollback."""

from __future__ import annotations

import pandas as pd
import panel as pn

from dashboard.client import ApiError
from dashboard.components.base import Component, clock, table
from imgclf.store.jobstates import LIVE_STATES, JobState

JOB_COLUMNS = ["job", "state", "started", "by", "why", "version", "report"]
EVIDENCE_COLUMNS = [
    "class",
    "test images",
    "current recall",
    "candidate recall",
    "change",
    "95% interval",
    "p",
    "level",
    "verdict",
    "detectable drop",
]
VERSION_COLUMNS = ["version", "current", "accuracy", "macro F1", "parent", "gate"]


def job_text(job: dict, base_url: str) -> str:
    """A job's state, stage and epoch; the gate's decision with both scores once it ended."""
    progress, result = job["progress"], job.get("result") or {}
    epoch = f" · epoch {progress['epoch']}/{progress['epochs']}" if progress.get("epoch") else ""
    text = f"Job `{job['id']}`: **{job['state']}** · {progress.get('stage')}{epoch}"
    if job.get("trigger") == "auto":
        text += f"  \nStarted by the retraining policy: {job.get('reason')}"
    if job["state"] in (JobState.PROMOTED, JobState.REJECTED):
        current = result.get("current")
        against = f"{current:.4f}" if isinstance(current, float) else "none"
        text += (
            f"\n\n**{job['state'].upper()}**: {result.get('reason', '')}  \n"
            f"candidate {result.get('metric', 'f1_macro')} {result.get('candidate', 0):.4f} "
            f"against current {against} · new version **{result.get('version')}**"
        )
        if result.get("verdict"):
            text += f" · gate verdict: **{result['verdict']}**"
        for name, note in (result.get("inconclusive") or {}).items():
            text += f"  \nNot enough evidence for {name!r}: {note}"
    if job["state"] in (JobState.FAILED, JobState.CANCELLED):
        text += f"\n\n**{job['state'].upper()}**: {job.get('error')}"
    elif job.get("cancel_requested_at") and job["state"] in LIVE_STATES:
        text += "\n\nCancel requested: stopping the job ..."
    if job.get("report"):
        text += f" · [report]({base_url}{job['report']})"
    return text


def evidence_frame(result: dict | None) -> pd.DataFrame:
    """The gate's evidence from a finished job's result: one row a compared class, then the
    overall metric and the checks on calibration and the unknown answer (empty before the gate
    ran, or with no current model to compare)."""
    decision = ((result or {}).get("outcome") or {}).get("decision") or {}
    rows = [
        (
            row["class"],
            row["n"],
            row["current_recall"],
            row["candidate_recall"],
            row["difference"],
            f"{row['ci_low']:+.3f} to {row['ci_high']:+.3f}",
            row["p_value"],
            row["level"],
            row["verdict"],
            row.get("detectable_drop"),
        )
        for row in decision.get("comparisons", [])
    ]
    overall = decision.get("overall")
    named = [(f"overall ({overall['metric']})", overall)] if overall else []
    named += [(f"{row['check']} ({row['what']})", row) for row in decision.get("trust", [])]
    for name, row in named:
        rows.append(
            (
                name,
                row.get("n"),
                row["current"],
                row["candidate"],
                row["difference"],
                f"{row['ci_low']:+.3f} to {row['ci_high']:+.3f}",
                row["p_value"],
                row["level"],
                row["verdict"],
                None,
            )
        )
    return pd.DataFrame(rows, columns=EVIDENCE_COLUMNS).round(4)


def policy_text(policy: dict) -> str:
    """The retraining policy in two lines: on or off, what it counted, when it fires next."""
    if not policy["enabled"]:
        return "Off (set `AUTO_RETRAIN=1`). " + f"Next: {policy['next']}."
    trigger = f"{policy['min_images']} new labelled images"
    if policy["on_drift"]:
        trigger += " or drift"
    return (
        f"On: retrains after {trigger}, at most every {policy['min_interval_s']:g} s.  \n"
        f"New labelled images since the last retrain: **{policy['new_images']}** · "
        f"next: {policy['next']}"
    )


def jobs_frame(jobs: list[dict], base_url: str) -> pd.DataFrame:
    rows = [
        (
            job["id"],
            job["state"],
            clock(job["created_at"]),
            job.get("trigger") or "manual",
            job.get("reason") or "",
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

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.live_job_id: str | None = None
        self.token_input = pn.widgets.PasswordInput(
            label="Admin token",
            placeholder="configured" if state.token else "IMGCLF_ADMIN_TOKEN",
            visible=not state.token,
        )
        # the one way in for a typed token: the state holds it, every tab reads it there
        self.token_input.param.watch(self._typed_token, "value")
        state.param.watch(self._show_job, "job")
        self.epochs_input = pn.widgets.IntInput(label="Epochs", value=10, start=1, end=200)
        self.retrain_button = pn.widgets.Button(label="Retrain now", color="success")
        self.retrain_button.on_click(self.on_retrain)
        self.rollback_button = pn.widgets.Button(label="Roll back", color="warning")
        self.rollback_button.on_click(self.on_rollback)
        self.cancel_button = pn.widgets.Button(label="Cancel job", color="danger", visible=False)
        self.cancel_button.on_click(self.on_cancel)
        self.policy_text = pn.pane.Markdown("")
        self.progress = pn.indicators.Progress(value=0, max=100, visible=False)
        self.job_text = pn.pane.Markdown("No retrain job started from this page yet.")
        self.job_log = pn.pane.Str("", styles={"font-size": "11px"}, max_height=220)
        self.evidence = table(pd.DataFrame(columns=EVIDENCE_COLUMNS), visible=False)
        self.jobs = table(pd.DataFrame(columns=JOB_COLUMNS), formatters={"report": "html"})
        self.versions = table(pd.DataFrame(columns=VERSION_COLUMNS))

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown(
                "### Retrain on training data plus uploads\nThe candidate is promoted unless "
                "a class it predicts lacks test images, a new class is not recognised, or "
                "paired tests on the same test images show it worse than the current model "
                "(overall, or in a class by more than the margin). Each comparison is shown "
                "below with its interval, p-value and verdict."
            ),
            pn.Row(
                self.token_input,
                self.epochs_input,
                self.retrain_button,
                self.cancel_button,
                self.rollback_button,
            ),
            self.progress,
            self.job_text,
            self.evidence,
            self.job_log,
            pn.pane.Markdown("### Automatic retraining"),
            self.policy_text,
            pn.pane.Markdown("### Jobs"),
            self.jobs,
            pn.pane.Markdown("### Model versions"),
            self.versions,
        )

    @property
    def job_id(self) -> str | None:
        """The job this session follows (the state's)."""
        return self.state.job_id

    def _typed_token(self, event) -> None:
        if event.new:
            self.state.token = event.new

    def on_retrain(self, _=None) -> None:
        try:
            job = self.client.retrain({"epochs": int(self.epochs_input.value)})
        except ApiError as error:
            if error.status != 409 or "job" not in error.body:
                self.notices.show(error)
                return
            job = error.body["job"]  # one is already running: follow that one
        self.progress.visible = True
        self.state.follow(job)

    def on_cancel(self, _=None) -> None:
        """Cancel the followed job (or the live one in the list)."""
        job_id = self.job_id or self.live_job_id
        if not job_id:
            return
        job = self.call(self.client.cancel, job_id)
        if job:
            self.state.follow(job)

    def on_rollback(self, _=None) -> None:
        pointer = self.call(self.client.rollback)
        if pointer:
            self.job_text.object = f"Rolled back: **{pointer['version']}** is current again."
            self.refresh()

    def _show_job(self, event) -> None:
        """The followed job as the last poll (or a button) found it; once it ended, the lists
        are refreshed."""
        job = event.new
        if job is None:
            return
        self.progress.value = int(100 * (job["progress"].get("fraction") or 0))
        self.job_text.object = job_text(job, self.client.base_url)
        self.job_log.object = "\n".join(job.get("log_tail", [])[-12:])
        self.cancel_button.visible = job["state"] in LIVE_STATES
        evidence = evidence_frame(job.get("result"))
        self.evidence.value, self.evidence.visible = evidence, not evidence.empty
        if job["state"] not in LIVE_STATES:
            self.progress.value = 100
            self.refresh()

    def refresh(self) -> None:
        jobs = self.call(self.client.jobs)
        if jobs is not None:
            self.jobs.value = jobs_frame(jobs, self.client.base_url)
            live = [job for job in jobs if job["state"] in LIVE_STATES]
            self.live_job_id = live[0]["id"] if live else None
            self.cancel_button.visible = bool(self.job_id or self.live_job_id)
        policy = self.call(self.client.policy)
        if policy is not None:
            self.policy_text.object = policy_text(policy)
        models = self.call(self.client.models)
        if models is not None:
            self.versions.value = versions_frame(models)
