"""Interactive Bokeh charts for the dashboard: hover for values, zoom and pan where it helps."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.palettes import Category10
from bokeh.plotting import figure
from bokeh.transform import dodge, linear_cmap

BLUE, ORANGE, RED, GREEN = Category10[10][0], Category10[10][1], Category10[10][3], "#2e7d32"
_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def _figure(title: str, height: int = 260, **kwargs):
    chart = figure(title=title, height=height, sizing_mode="stretch_width", tools=_TOOLS, **kwargs)
    chart.toolbar.logo = None
    chart.title.text_font_size = "13px"
    return chart


def probabilities(values: dict[str, float], predicted: str):
    """Horizontal bars of every class's probability, the predicted class highlighted."""
    names = list(values)[::-1]
    source = ColumnDataSource(
        {
            "name": names,
            "p": [values[n] for n in names],
            "colour": [ORANGE if n == predicted else BLUE for n in names],
        }
    )
    chart = _figure("probability per class", max(180, 22 * len(names) + 60), y_range=names)
    chart.hbar(y="name", right="p", height=0.7, color="colour", source=source)
    chart.x_range.start, chart.x_range.end = 0, 1
    chart.add_tools(HoverTool(tooltips=[("class", "@name"), ("probability", "@p{0.0000}")]))
    return chart


def bars(counts: dict[str, dict[str, int]], title: str, y_label: str = "images"):
    """Grouped bars of counts per class for one or more series (``{series: {class: n}}``)."""
    names = sorted({name for tally in counts.values() for name in tally})
    chart = _figure(title, x_range=names)
    width = 0.8 / max(1, len(counts))
    for index, (series, tally) in enumerate(counts.items()):
        offset = -0.4 + width * (index + 0.5)
        source = ColumnDataSource({"name": names, "n": [tally.get(n, 0) for n in names]})
        chart.vbar(
            x=dodge("name", offset, range=chart.x_range),
            top="n",
            width=width * 0.95,
            source=source,
            legend_label=series,
            color=Category10[10][index % 10],
            alpha=0.85,
        )
    chart.add_tools(HoverTool(tooltips=[("class", "@name"), (y_label, "@n")]))
    chart.yaxis.axis_label = y_label
    chart.xaxis.major_label_orientation = 0.8 if len(names) > 12 else 0
    chart.legend.location = "top_right"
    return chart


def _times(points: Sequence[dict]) -> list[datetime]:
    return [datetime.fromtimestamp(p["start"], UTC) for p in points]


def _time_axis(chart, times: Sequence[datetime]) -> None:
    """Show at least the last ten minutes, so that one minute of traffic is a bar, not a wall."""
    if times:
        chart.x_range.start = min(min(times), max(times) - timedelta(minutes=10))
        chart.x_range.end = max(times) + timedelta(minutes=1)


def requests_over_time(points: Sequence[dict]):
    """Predictions, errors and unknown answers per minute (last hour)."""
    source = ColumnDataSource(
        {
            "t": _times(points),
            "requests": [p["requests"] for p in points],
            "errors": [p["errors"] for p in points],
            "unknown": [p.get("unknown", 0) for p in points],
        }
    )
    chart = _figure("predictions per minute (UTC)", x_axis_type="datetime")
    _time_axis(chart, source.data["t"])
    chart.vbar(x="t", top="requests", width=45_000, source=source, color=BLUE, legend_label="all")
    chart.vbar(x="t", top="errors", width=45_000, source=source, color=RED, legend_label="errors")
    chart.line(
        x="t", y="unknown", source=source, color="#7f3c8d", line_width=2, legend_label="unknown"
    )
    chart.add_tools(
        HoverTool(
            tooltips=[
                ("minute", "@t{%H:%M}"),
                ("requests", "@requests"),
                ("errors", "@errors"),
                ("unknown", "@unknown"),
            ],
            formatters={"@t": "datetime"},
        )
    )
    chart.legend.location = "top_left"
    return chart


def latency_over_time(points: Sequence[dict]):
    """p50 and p95 latency per minute (last hour), in milliseconds."""
    source = ColumnDataSource(
        {
            "t": _times(points),
            "p50": [p["latency_p50_ms"] for p in points],
            "p95": [p["latency_p95_ms"] for p in points],
        }
    )
    chart = _figure("latency per minute, ms (UTC)", x_axis_type="datetime")
    _time_axis(chart, source.data["t"])
    for key, colour in (("p50", BLUE), ("p95", ORANGE)):
        chart.line(x="t", y=key, source=source, color=colour, legend_label=key, line_width=2)
        chart.scatter(x="t", y=key, source=source, color=colour, size=5)
    chart.add_tools(
        HoverTool(
            tooltips=[("minute", "@t{%H:%M}"), ("p50", "@p50{0.0} ms"), ("p95", "@p95{0.0} ms")],
            formatters={"@t": "datetime"},
        )
    )
    chart.legend.location = "top_left"
    return chart


def overlaid_histograms(bins: Sequence[float], series: dict[str, Sequence[int]], x_label: str):
    """Share of images per bin for each series (e.g. training against production)."""
    edges = np.asarray(bins)
    chart = _figure(f"{x_label}: share of images per bin")
    for index, (name, counts) in enumerate(series.items()):
        counts = np.asarray(counts, dtype=float)
        if not counts.sum():
            continue
        source = ColumnDataSource(
            {"left": edges[:-1], "right": edges[1:], "share": counts / counts.sum()}
        )
        chart.quad(
            left="left",
            right="right",
            bottom=0,
            top="share",
            source=source,
            alpha=0.45,
            color=Category10[10][index],
            legend_label=name,
        )
    chart.add_tools(
        HoverTool(
            tooltips=[("from", "@left{0.00}"), ("to", "@right{0.00}"), ("share", "@share{0.0%}")]
        )
    )
    chart.xaxis.axis_label = x_label
    return chart


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str]):
    """A heat map of true against predicted classes; hover a cell for its count."""
    matrix = np.asarray(matrix)
    names = [str(n) for n in class_names]
    true, predicted = np.meshgrid(np.arange(len(names)), np.arange(len(names)), indexing="ij")
    source = ColumnDataSource(
        {
            "true": [names[i] for i in true.ravel()],
            "predicted": [names[j] for j in predicted.ravel()],
            "n": matrix.ravel().tolist(),
        }
    )
    chart = _figure(
        "confusion matrix (test set)",
        max(300, 30 * len(names) + 80),
        x_range=names,
        y_range=names[::-1],
    )
    colour = linear_cmap("n", "Blues256", low=int(matrix.max()) if matrix.size else 1, high=0)
    chart.rect(
        x="predicted",
        y="true",
        width=1,
        height=1,
        source=source,
        fill_color=colour,
        line_color="white",
    )
    chart.text(
        x="predicted",
        y="true",
        text="n",
        source=source,
        text_align="center",
        text_baseline="middle",
        text_font_size="10px",
    )
    chart.add_tools(
        HoverTool(tooltips=[("true", "@true"), ("predicted", "@predicted"), ("images", "@n")])
    )
    chart.xaxis.axis_label, chart.yaxis.axis_label = "predicted", "true"
    return chart


def training_curves(history: dict[str, list[float]], key: str):
    """Training and validation ``key`` (loss or accuracy) per epoch."""
    chart = _figure(f"{key} per epoch")
    for name, values, colour in (
        ("training", history.get(key) or [], BLUE),
        ("validation", history.get(f"val_{key}") or [], ORANGE),
    ):
        source = ColumnDataSource({"epoch": list(range(1, len(values) + 1)), "value": values})
        chart.line(x="epoch", y="value", source=source, color=colour, legend_label=name)
        chart.scatter(x="epoch", y="value", source=source, color=colour, size=4)
    chart.add_tools(HoverTool(tooltips=[("epoch", "@epoch"), (key, "@value{0.0000}")]))
    chart.xaxis.axis_label = "epoch"
    return chart
