"""What every tab shares: the dashboard's state (``dashboard.state``: the API client, the
banner for errors, the token, what the last poll brought), and a safe way to call."""

from __future__ import annotations

import time

import panel as pn

from dashboard.state import DashboardState


class Component(pn.viewable.Viewer):
    """A tab: ``__panel__`` gives its layout, ``refresh`` reloads it from the API; what the
    dashboard polls it binds to in ``state``."""

    title = "tab"

    def __init__(self, state: DashboardState, **params):
        super().__init__(**params)
        self.state = state
        self.client, self.notices = state.client, state.notices

    def call(self, function, *args, **kwargs):
        """Call the API; on failure show the reason in the banner and return None."""
        return self.state.call(function, *args, **kwargs)

    def refresh(self) -> None:
        """Reload what the tab shows (called when the page opens and by the timers)."""


def clock(stamp: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS`` (empty for None)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def table(frame, **kwargs) -> pn.widgets.Tabulator:
    """A read-only, sortable Tabulator table with the dashboard's defaults."""
    options = {"disabled": True, "show_index": False, "layout": "fit_data_stretch"}
    return pn.widgets.Tabulator(frame, **{**options, **kwargs})
