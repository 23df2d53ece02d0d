"""The banner under the header: the API being down, or a request it refused."""

from __future__ import annotations

import panel as pn

from dashboard.client import ApiError


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
