"""The dashboard's shell: a Panel template with a status header, a banner, one tab per component.

``python -m dashboard`` (``make dashboard``; ``make run`` starts it with the API) serves
``create_app`` at ``/app``. A client of the REST API only (``IMGCLF_API_URL``): everything it
shows comes from the API, and when the API is down or slow it says so and keeps running.
"""

from __future__ import annotations

import panel as pn

from dashboard.client import ApiClient
from dashboard.components import (
    DataView,
    InsightsView,
    MonitorView,
    PredictView,
    RetrainView,
    ReviewView,
)
from dashboard.state import DashboardState
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
    """The tabs, bound to one ``DashboardState`` whose ``poll`` is the only timer."""

    def __init__(self, client: ApiClient | None = None):
        self.state = DashboardState(client)
        self.client, self.notices = self.state.client, self.state.notices
        self.status = pn.pane.Markdown(
            pn.bind(lambda health: status_line(self.client, health), self.state.param.health),
            margin=(0, 10),
        )
        retrain = RetrainView(self.state)
        self.views = [
            PredictView(self.state),
            DataView(self.state),
            retrain,
            ReviewView(self.state),
            MonitorView(self.state),
            InsightsView(self.state),
        ]
        self.retrain = retrain
        self.tabs = pn.Tabs(*((view.title, view) for view in self.views), dynamic=False)
        self.tabs.param.watch(self.on_tab, "active")

    def on_tab(self, event) -> None:
        """A tab brought to the front shows fresh figures; the Monitor's are polled while it
        is shown."""
        shown = self.views[event.new]
        self.state.monitoring = isinstance(shown, MonitorView)
        shown.refresh()

    def refresh_all(self) -> None:
        self.state.poll()
        for view in self.views:
            view.refresh()

    def template(self, refresh_ms: int) -> pn.template.FastListTemplate:
        pn.state.onload(self.refresh_all)
        pn.state.add_periodic_callback(self.state.poll, period=refresh_ms)
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
