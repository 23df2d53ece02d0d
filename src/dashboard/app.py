"""The dashboard's shell: a Panel template with a status header, a banner, one tab per component.

``python -m dashboard`` (``make dashboard``; ``make run`` starts it with the API) serves
``create_app`` at ``/app``. A client of the REST API only (``IMGCLF_API_URL``): everything it
shows comes from the API, and when the API is down or slow it says so and keeps running.
"""

from __future__ import annotations

import panel as pn

from dashboard.client import ApiClient, ApiError
from dashboard.components import (
    DataView,
    InsightsView,
    MonitorView,
    PredictView,
    RetrainView,
    ReviewView,
)
from dashboard.components.base import Notices
from imgclf.config import get_server_settings

ACCENT = "#2563eb"


def status_line(client: ApiClient, health: dict | None) -> str:
    """The header's line: is the API up, which model it serves, for how long."""
    if health is None:
        return f"API: **unreachable** at {client.base_url}"
    uptime = int(health["uptime_s"])
    return (
        f"API: **{health['status']}** at {client.base_url} · model "
        f"**{health['model_version'] or 'none'}** · up {uptime // 3600} h "
        f"{uptime % 3600 // 60} min · [API docs]({client.base_url}/docs) · "
        f"[reports]({client.base_url}/reports/)"
    )


class Dashboard:
    """The tabs and the timers that keep them fresh."""

    def __init__(self, client: ApiClient | None = None):
        self.client = client or ApiClient()
        self.notices = Notices()
        self.status = pn.pane.Markdown("", margin=(0, 10))
        retrain = RetrainView(self.client, self.notices)
        self.views = [
            PredictView(self.client, self.notices),
            DataView(self.client, self.notices, token_source=retrain.token_input),
            retrain,
            ReviewView(self.client, self.notices),
            MonitorView(self.client, self.notices),
            InsightsView(self.client, self.notices),
        ]
        self.retrain = retrain
        self.tabs = pn.Tabs(*((view.title, view) for view in self.views), dynamic=False)
        self.tabs.param.watch(self.on_tab, "active")

    def on_tab(self, event) -> None:
        """A tab brought to the front shows fresh figures."""
        self.views[event.new].refresh()

    def refresh_status(self) -> None:
        try:
            health = self.client.health()
        except ApiError as error:
            self.notices.show(error)
            health = None
        else:
            self.notices.clear(outage_only=True)
        self.status.object = status_line(self.client, health)

    def refresh_all(self) -> None:
        self.refresh_status()
        for view in self.views:
            view.refresh()

    def tick(self) -> None:
        """Every few seconds: the header, and the Monitor tab while it is shown."""
        self.refresh_status()
        shown = self.views[self.tabs.active]
        if isinstance(shown, MonitorView):
            shown.refresh()

    def template(self, refresh_ms: int) -> pn.template.FastListTemplate:
        pn.state.onload(self.refresh_all)
        pn.state.add_periodic_callback(self.tick, period=refresh_ms)
        pn.state.add_periodic_callback(self.retrain.follow_job, period=1000)
        return pn.template.FastListTemplate(
            title="imgclf · image classifier",
            header=[self.status],
            main=[self.notices.alert, self.tabs],
            accent=ACCENT,
            main_layout=None,
            theme_toggle=False,
        )


def create_app(client: ApiClient | None = None) -> pn.template.FastListTemplate:
    """Build one browser session's dashboard (Panel calls this for every page load)."""
    pn.extension("tabulator", sizing_mode="stretch_width", notifications=True)
    return Dashboard(client).template(get_server_settings().dashboard_refresh_ms)
