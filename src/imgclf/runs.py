"""The run folder: one per notebook run, ``reports/<UTC time>-<notebook>/``, and its files.

A run folder holds the executed notebook (``notebook.ipynb``), the HTML report
(``report.html``), ``run.json`` (what was run, with which parameters, how it ended; written by
the runner) and ``summary.json`` (the key results, written by the notebook itself through
``write_summary`` while it runs, which is also how a retrain job reports its progress).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from imgclf.files import write_json_atomic

SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
NOTEBOOK_FILE = "notebook.ipynb"
REPORT_FILE = "report.html"
#: The job process's own log (kernel output, tracebacks), beside the report.
LOG_FILE = "job.log"


class RunFolderError(RuntimeError):
    """A run folder could not be created."""


def new_run_dir(reports_dir: Path, name: str) -> Path:
    """Create and return a fresh, uniquely named run folder.

    Raises:
        RunFolderError: a thousand folders of that name and second already exist.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        suffix = "" if attempt == 0 else f"-{attempt + 1}"
        candidate = reports_dir / f"{stamp}-{name}{suffix}"
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise RunFolderError(f"could not create a run folder for {name} in {reports_dir}")


def write_summary(run_dir: str | Path | None, **results) -> dict:
    """Record key results in ``<run_dir>/summary.json`` (merged with earlier ones).

    Returns the merged summary; a no-op returning ``results`` when ``run_dir`` is empty (a
    notebook opened by hand in JupyterLab).
    """
    if not run_dir:
        return results
    path = Path(run_dir) / SUMMARY_FILE
    merged = {**read_summary(Path(run_dir)), **results}
    write_json_atomic(path, merged)
    return merged


def read_summary(run_dir: Path) -> dict:
    """Return a run's summary, or an empty dict if the notebook wrote none."""
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(run_dir: Path, record: dict) -> None:
    """Write ``run.json``: what the runner ran and how it ended."""
    write_json_atomic(run_dir / RUN_FILE, record)


def list_runs(reports_dir: Path) -> list[dict]:
    """Return every run under the reports folder (newest first), with its summary merged in."""
    runs = []
    for path in sorted(reports_dir.glob(f"*/{RUN_FILE}"), reverse=True):
        record = json.loads(path.read_text())
        record.update(folder=path.parent.name, summary=read_summary(path.parent))
        runs.append(record)
    return runs
