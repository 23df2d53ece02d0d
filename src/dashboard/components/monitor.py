"""Monitor: the service in production, refreshed at every poll of the dashboard's state while
the tab is shown."""

from __future__ import annotations

import panel as pn

from dashboard import charts
from dashboard.components.base import Component, clock

#: (title, where in /stats, format)
INDICATORS = (
    ("predictions", ("predictions",), "{:,.0f}"),
    ("error rate", ("error_rate",), "{:.1%}"),
    ("unknown answers", ("unknown", "rate"), "{:.1%}"),
    ("latency p50", ("latency_ms", "p50"), "{:.1f} ms"),
    ("latency p95", ("latency_ms", "p95"), "{:.1f} ms"),
    ("latency p99", ("latency_ms", "p99"), "{:.1f} ms"),
    ("feedback accuracy", ("feedback", "accuracy"), "{:.1%}"),
)


def figure_card(title: str, value, fmt: str) -> pn.Column:
    shown = "-" if value is None else fmt.format(value)
    return pn.Column(pn.pane.Markdown(f"**{title}**\n\n## {shown}"), width=160)


def _dig(values: dict, path: tuple[str, ...]):
    for key in path:
        values = (values or {}).get(key)
    return values


class MonitorView(Component):
    title = "Monitor"

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.cards = pn.FlexBox()
        self.charts = pn.Column()
        self.last_retrain = pn.pane.Markdown("")
        state.param.watch(self._show, "stats")

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("### Production (refreshes every few seconds)"),
            self.cards,
            self.charts,
            self.last_retrain,
        )

    def refresh(self) -> None:
        """The figures now (the tab was brought to the front); the polls keep them fresh."""
        stats = self.call(self.client.stats)
        if stats is not None:
            self.state.model = self.call(self.client.model) or {}
            self.state.stats = stats

    def _show(self, event) -> None:
        stats, model = event.new, self.state.model or {}
        if stats is None:
            return
        self.cards.objects = [
            figure_card("uptime", stats["uptime_s"] / 60, "{:,.1f} min"),
            figure_card("model", stats["model_version"], "{}"),
            figure_card("test accuracy", model.get("test_metrics", {}).get("accuracy"), "{:.2%}"),
            *(figure_card(title, _dig(stats, path), fmt) for title, path, fmt in INDICATORS),
        ]
        points = stats["series"]["points"]
        width = {"width": 420, "sizing_mode": "fixed"}
        self.charts.objects = [
            pn.pane.Bokeh(charts.requests_over_time(points), **width),
            pn.pane.Bokeh(charts.latency_over_time(points), **width),
            pn.pane.Bokeh(
                charts.bars(
                    {"predictions": stats["by_class"]}, "predictions by class", "predictions"
                ),
                **width,
            ),
        ]
        last = stats.get("last_retrain")
        self.last_retrain.object = (
            f"Last retrain: job `{last['id']}` **{last['state']}** at {clock(last['finished_at'])}"
            if last
            else "No retrain has run yet."
        )
