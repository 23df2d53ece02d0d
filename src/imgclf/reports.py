"""HTML reports: an executed notebook as a page, and ``reports/index.html`` listing every run."""

from __future__ import annotations

import html
import re
from pathlib import Path

from imgclf import runs
from imgclf.files import write_text_atomic

#: Figures shown in the index, in this order, when a run's summary has them.
INDEX_FIELDS = ("version", "accuracy", "f1_macro", "decision", "candidate", "current", "images")

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left}th{background:#f3f4f6;cursor:pointer;user-select:none}th:hover{background:#e5e7eb}
tr.failed{background:#fdd}tr.current{background:#e8f5e9;font-weight:600}
.badge{background:#2e7d32;color:#fff;border-radius:4px;padding:0 6px;font-size:12px}"""

#: Click a header to sort by that column (numbers as numbers), again to reverse.
_SORT_SCRIPT = """document.querySelectorAll("th").forEach((th, column) => th.addEventListener(
"click", () => {const body = th.closest("table").tBodies[0];
const up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
const key = r => r.cells[column].dataset.sort ?? r.cells[column].textContent.trim();
const rows = [...body.rows].sort((a, b) => {const x = key(a), y = key(b);
const n = parseFloat(x) - parseFloat(y); const d = isNaN(n) ? x.localeCompare(y) : n;
return up ? d : -d;}); rows.forEach(r => body.appendChild(r));}));"""


def header_html(record: dict, summary: dict) -> str:
    """The block at the top of a report: what ran, how it ended, on which data, which model."""
    facts = {
        "notebook": record.get("notebook"),
        "status": record.get("status"),
        "started (UTC)": (record.get("started_at") or "")[:19].replace("T", " "),
        "duration": f"{record['duration_s']:.0f} s" if record.get("duration_s") else None,
        "model version": summary.get("version"),
        "decision": summary.get("decision"),
        "data fingerprint": (summary.get("data_fingerprint") or "")[:16] or None,
        "error": record.get("error"),
    }
    cells = "".join(
        f"<div><span>{html.escape(name)}</span><b>{html.escape(str(value))}</b></div>"
        for name, value in facts.items()
        if value not in (None, "")
    )
    return (
        '<header style="display:flex;flex-wrap:wrap;gap:8px 28px;padding:12px 20px;'
        "margin:0 0 8px;background:#f3f4f6;border-bottom:3px solid #2563eb;"
        'font-family:system-ui,sans-serif;font-size:14px">'
        f"{cells}</header><style>header span{{color:#555;margin-right:6px}}</style>"
    )


def export_html(
    notebook: Path, target: Path, show_code: bool = False, header: str | None = None
) -> Path:
    """Convert an executed notebook to a self-contained HTML file (figures embedded).

    Args:
        header: HTML put at the top of the page's body (see ``header_html``).
    """
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    if header:
        body = re.sub(r"(<body[^>]*>)", lambda match: match.group(1) + header, body, count=1)
    return write_text_atomic(target, body)


def _cell(value) -> str:
    if isinstance(value, float):
        return f'<td data-sort="{value!r}">{value:.4f}</td>'
    return f"<td>{html.escape(str(value)) if value is not None else ''}</td>"


def _row(run: dict, current_version: str | None) -> str:
    summary, folder = run["summary"], html.escape(run["folder"])
    is_current = current_version is not None and summary.get("version") == current_version
    figures = "".join(_cell(summary.get(key)) for key in INDEX_FIELDS)
    links = (
        f'<a href="{folder}/{runs.REPORT_FILE}">report</a> · '
        f'<a href="{folder}/{runs.NOTEBOOK_FILE}">notebook</a>'
    )
    badge = ' <span class="badge">current</span>' if is_current else ""
    classes = " ".join(c for c in (run["status"], "current" if is_current else "") if c)
    return (
        f'<tr class="{html.escape(classes)}">{_cell(run["started_at"][:19])}'
        f"{_cell(run['name'])}{_cell(run['status'])}{_cell(run.get('duration_s'))}"
        f"{figures}<td>{links}{badge}</td></tr>"
    )


def update_index(reports_dir: Path, current_version: str | None = None) -> Path:
    """Write ``reports/index.html``: every run, sortable by any column, the current model marked.

    Args:
        current_version: the registry's current version; the run that produced it is marked.
    """
    rows = [_row(run, current_version) for run in runs.list_runs(reports_dir)]
    header = "".join(
        f"<th>{name}</th>"
        for name in ("started (UTC)", "notebook", "status", "seconds", *INDEX_FIELDS, "links")
    )
    current = f"current model: <b>{html.escape(current_version)}</b>" if current_version else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgclf reports</title>
<style>{_STYLE}</style></head><body><h1>Pipeline runs</h1>
<p>{len(rows)} run(s), newest first; click a column to sort. {current}</p>
<table><thead><tr>{header}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table><script>{_SORT_SCRIPT}</script></body></html>
"""
    reports_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(reports_dir / "index.html", page)
