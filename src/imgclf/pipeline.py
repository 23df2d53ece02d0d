"""Run the notebooks with papermill, export HTML reports and keep ``reports/index.html``.

Each run gets its own folder ``reports/<UTC time>-<notebook>/`` holding the executed notebook
(``notebook.ipynb``), the HTML report (``report.html``, code hidden by default), ``run.json``
(what was run, with which parameters, how it ended) and ``summary.json`` (the key results,
written by the notebook itself through ``write_summary``).

Command line::

    python -m imgclf.pipeline run train -p epochs 5 -p seed 1
    python -m imgclf.pipeline index
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from imgclf.config import Settings, get_settings
from imgclf.files import write_json_atomic, write_text_atomic

NOTEBOOKS = {
    "eda": "01_eda.ipynb",
    "train": "02_train.ipynb",
    "evaluate": "03_evaluate.ipynb",
    "retrain": "04_retrain.ipynb",
}
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"

#: Figures shown in the index, in this order, when a run's summary has them.
INDEX_FIELDS = ("version", "accuracy", "f1_macro", "decision", "candidate", "current", "images")


class PipelineError(RuntimeError):
    """A notebook run failed; the message names the notebook, the cell's error and the report."""


@dataclass
class RunResult:
    """Where a run's artefacts are and what it produced."""

    name: str
    run_dir: Path
    status: str
    summary: dict

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"


def write_summary(run_dir: str | Path | None, **results) -> dict:
    """Record a notebook's key results in ``<run_dir>/summary.json`` (merged with earlier ones).

    Called from the notebooks; a no-op returning the results when ``run_dir`` is empty (a
    notebook opened by hand in JupyterLab).
    """
    if not run_dir:
        return results
    path = Path(run_dir) / SUMMARY_FILE
    merged = {**(json.loads(path.read_text()) if path.is_file() else {}), **results}
    write_json_atomic(path, merged)
    return merged


def read_summary(run_dir: Path) -> dict:
    """Return a run's summary, or an empty dict if the notebook wrote none."""
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def new_run_dir(reports_dir: Path, name: str) -> Path:
    """Create and return a fresh, uniquely named run folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = (
            reports_dir / f"{stamp}-{name}"
            if attempt == 0
            else (reports_dir / f"{stamp}-{name}-{attempt + 1}")
        )
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise PipelineError(f"could not create a run folder for {name} in {reports_dir}")


def export_html(notebook: Path, target: Path, show_code: bool = False) -> Path:
    """Convert an executed notebook to a self-contained HTML file (figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    return write_text_atomic(target, body)


def run_notebook(
    name: str,
    parameters: dict | None = None,
    settings: Settings | None = None,
    run_dir: Path | None = None,
    show_code: bool = False,
    log_output: bool = False,
) -> RunResult:
    """Execute one pipeline notebook with papermill and write its report and the index.

    Args:
        name: a key of ``NOTEBOOKS`` (``eda``, ``train``, ``evaluate``, ``retrain``).
        parameters: values for the notebook's ``parameters`` cell; ``run_dir`` is added.
        run_dir: where to write (default: a new folder under the reports folder).

    Returns:
        The run, with the notebook's summary.

    Raises:
        PipelineError: unknown notebook, or a cell raised (the report is still written and
            the message says where it is).
    """
    import papermill

    if name not in NOTEBOOKS:
        raise PipelineError(f"unknown notebook {name!r}; expected one of {sorted(NOTEBOOKS)}")
    settings = settings or get_settings()
    run_dir = run_dir or new_run_dir(settings.reports_dir, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = {**(parameters or {}), "run_dir": str(run_dir)}
    record = {
        "name": name,
        "notebook": NOTEBOOKS[name],
        "parameters": parameters,
        "started_at": datetime.now(UTC).isoformat(),
        "status": "running",
    }
    write_json_atomic(run_dir / RUN_FILE, record)
    started, error = time.monotonic(), None
    try:
        papermill.execute_notebook(
            str(settings.notebooks_dir / NOTEBOOKS[name]),
            str(run_dir / "notebook.ipynb"),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(settings.notebooks_dir),
            progress_bar=False,
            log_output=log_output,
        )
    except papermill.PapermillExecutionError as failure:
        error = f"{failure.ename}: {failure.evalue}"
    record.update(
        status="failed" if error else "succeeded",
        error=error,
        finished_at=datetime.now(UTC).isoformat(),
        duration_s=round(time.monotonic() - started, 1),
    )
    if (run_dir / "notebook.ipynb").is_file():
        export_html(run_dir / "notebook.ipynb", run_dir / "report.html", show_code)
    write_json_atomic(run_dir / RUN_FILE, record)
    update_index(settings.reports_dir)
    if error:
        raise PipelineError(
            f"{NOTEBOOKS[name]} failed: {error} (report: {run_dir / 'report.html'})"
        )
    return RunResult(name, run_dir, record["status"], read_summary(run_dir))


def list_runs(reports_dir: Path) -> list[dict]:
    """Return every run under the reports folder (newest first), with its summary merged in."""
    runs = []
    for path in sorted(reports_dir.glob(f"*/{RUN_FILE}"), reverse=True):
        record = json.loads(path.read_text())
        record.update(folder=path.parent.name, summary=read_summary(path.parent))
        runs.append(record)
    return runs


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value)) if value is not None else ""


def update_index(reports_dir: Path) -> Path:
    """Write ``reports/index.html``: a table of every run with key figures and links."""
    rows = []
    for run in list_runs(reports_dir):
        summary, folder = run["summary"], html.escape(run["folder"])
        figures = "".join(f"<td>{_cell(summary.get(key))}</td>" for key in INDEX_FIELDS)
        links = (
            f'<a href="{folder}/report.html">report</a> · '
            f'<a href="{folder}/notebook.ipynb">notebook</a>'
        )
        rows.append(
            f'<tr class="{_cell(run["status"])}"><td>{_cell(run["started_at"][:19])}</td>'
            f"<td>{_cell(run['name'])}</td><td>{_cell(run['status'])}</td>"
            f"<td>{_cell(run.get('duration_s'))}</td>{figures}<td>{links}</td></tr>"
        )
    header = "".join(f"<th>{key}</th>" for key in INDEX_FIELDS)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgclf reports</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.failed{{background:#fdd}}</style>
</head><body><h1>Pipeline runs</h1><p>{len(rows)} run(s), newest first.</p>
<table><thead><tr><th>started (UTC)</th><th>notebook</th><th>status</th><th>seconds</th>{header}
<th>links</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    reports_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(reports_dir / "index.html", page)


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints errors without a traceback and returns 1 on failure."""
    parser = argparse.ArgumentParser(prog="python -m imgclf.pipeline")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute a notebook and write its report")
    run.add_argument("notebook", choices=sorted(NOTEBOOKS))
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a notebook parameter (Python literal)",
    )
    run.add_argument("--show-code", action="store_true", help="keep code cells in the HTML")
    commands.add_parser("index", help="rewrite reports/index.html")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "index":
        print(update_index(settings.reports_dir))
        return 0
    parameters = {name: _parse_value(value) for name, value in args.parameter}
    print(f"running {NOTEBOOKS[args.notebook]} ...", flush=True)
    try:
        result = run_notebook(
            args.notebook, parameters, settings, show_code=args.show_code, log_output=True
        )
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in result.summary.items() if k in INDEX_FIELDS}
    print(f"{args.notebook}: {json.dumps(shown)}\nreport: {result.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
