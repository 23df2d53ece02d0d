"""The dashboard's one state: what the API said at the last poll, the followed jobs (a retrain,
a scan of the data), and the admin token. One browser session has one ``DashboardState``; its
``poll`` is the only timer (every ``IMGCLF_DASHBOARD_REFRESH_MS``), and the tabs bind to its
parameters instead of asking the API on their own.
"""

from __future__ import annotations

import param

from dashboard.client import ApiClient, ApiError
from dashboard.notices import Notices
from imgclf.store.jobstates import LIVE_STATES


class DashboardState(param.Parameterized):
    """One poll per interval fills ``health``, the followed ``job`` and, while the Monitor tab
    is shown, ``stats`` and ``model``; ``token`` is the one place the admin token is held (the
    client sends what it holds)."""

    token = param.String(default="", doc="The admin token the client sends.")
    health = param.Dict(default=None, allow_None=True, doc="/health at the last poll.")
    stats = param.Dict(default=None, allow_None=True, doc="/stats, polled while monitored.")
    model = param.Dict(default=None, allow_None=True, doc="/model, polled while monitored.")
    job_id = param.String(default=None, allow_None=True, doc="The job followed, if any.")
    job = param.Dict(default=None, allow_None=True, doc="That job at the last poll.")
    scan_id = param.String(default=None, allow_None=True, doc="The data scan followed, if any.")
    scan = param.Dict(default=None, allow_None=True, doc="That scan job at the last poll.")
    monitoring = param.Boolean(default=False, doc="Poll /stats and /model too.")
    polls = param.Integer(default=0, doc="Polls so far (one per interval).")

    def __init__(self, client: ApiClient | None = None, notices: Notices | None = None):
        client = client or ApiClient()
        super().__init__(token=client.token or "")
        self.client = client
        self.notices = notices or Notices()

    @param.depends("token", watch=True)
    def _hand_token_to_client(self) -> None:
        self.client.token = self.token

    def call(self, function, *args, **kwargs):
        """Call the API; on failure show the reason in the banner and return None."""
        try:
            result = function(*args, **kwargs)
        except ApiError as error:
            self.notices.show(error)
            return None
        self.notices.clear(outage_only=True)
        return result

    def follow(self, job: dict) -> None:
        """Show ``job`` (just started, found running or cancelled) and, while it lives, follow
        it at every poll."""
        self.job_id = job["id"] if job["state"] in LIVE_STATES else None
        self.job = job

    def follow_scan(self, job: dict) -> None:
        """Show the scan of all the data ``job`` and, while it lives, follow it at every poll."""
        self.scan_id = job["id"] if job["state"] in LIVE_STATES else None
        self.scan = job

    def _poll_job(self, id_name: str, job_name: str) -> None:
        """The followed job ``id_name`` into ``job_name``: shown once more when it has ended,
        then no longer followed."""
        job = self.call(self.client.job, getattr(self, id_name))
        if job is not None:
            if job["state"] not in LIVE_STATES:
                setattr(self, id_name, None)
            setattr(self, job_name, job)

    def poll(self) -> None:
        """The one poll of an interval: health, the followed retrain job and data scan, and
        the Monitor's figures while it is shown."""
        self.polls += 1
        self.health = self.call(self.client.health)
        if self.job_id:
            self._poll_job("job_id", "job")
        if self.scan_id:
            self._poll_job("scan_id", "scan")
        if self.monitoring:
            stats = self.call(self.client.stats)
            if stats is not None:
                self.model = self.call(self.client.model) or {}
                self.stats = stats
