"""What every tab shares: the API client, the banner for errors, and a safe way to call."""

from __future__ import annotations

import time

import panel as pn

from dashboard.client import ApiClient, ApiError


class Notices:
    """The banner under the header: the API being down, or a request it refused."""

    def __init__(self):
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, margin=(0, 10))
        self.outage = False

    def show(self, error: ApiError) -> None:
        self.outage = error.status is None  # no answer at all: the API is down or slow
        self.alert.object = f"**{error}**"
        self.alert.visible = True

    def clear(self, outage_only: bool = False) -> None:
        if not outage_only or self.outage:
            self.alert.visible, self.outage = False, False


class Component(pn.viewable.Viewer):
    """A tab: ``__panel__`` gives its layout, ``refresh`` reloads it from the API."""

    title = "tab"

    def __init__(self, client: ApiClient, notices: Notices, **params):
        super().__init__(**params)
        self.client, self.notices = client, notices

    def call(self, function, *args, **kwargs):
        """Call the API; on failure show the reason in the banner and return None."""
        try:
            result = function(*args, **kwargs)
        except ApiError as error:
            self.notices.show(error)
            return None
        self.notices.clear(outage_only=True)
        return result

    def refresh(self) -> None:
        """Reload what the tab shows (called when the page opens and by the timers)."""


def clock(stamp: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS`` (empty for None)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def table(frame, **kwargs) -> pn.widgets.Tabulator:
    """A read-only, sortable Tabulator table with the dashboard's defaults."""
    options = {"disabled": True, "show_index": False, "layout": "fit_data_stretch"}
    return pn.widgets.Tabulator(frame, **{**options, **kwargs})
