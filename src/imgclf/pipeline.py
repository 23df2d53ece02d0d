"""Run the pipeline's notebooks with papermill: one run folder each (``imgclf.runs``), an HTML
report (``imgclf.reports``) and a fresh ``reports/index.html``.

A pure runner: what a run means (a registering run reserves a version and settles a promotion,
``imgclf.loop.registering``) is its caller's, through the ``after`` hook. The command line is
``imgclf run NOTEBOOK -p NAME VALUE`` (``imgclf.cli``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from imgclf import reports, runs
from imgclf.config import Settings, get_settings
from imgclf.model import registry

NOTEBOOKS = {
    "eda": "01_eda.ipynb",
    "train": "02_train.ipynb",
    "evaluate": "03_evaluate.ipynb",
    "retrain": "04_retrain.ipynb",
}


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
        return self.run_dir / runs.REPORT_FILE


def update_index(settings: Settings) -> Path:
    """Rewrite ``reports/index.html``, marking the run of the registry's current version."""
    return reports.update_index(
        settings.reports_dir, registry.current_version(settings.models_dir)
    )


def _execute(notebook: Path, run_dir: Path, parameters: dict, log_output: bool) -> str | None:
    """Run ``notebook`` with papermill into ``run_dir``; the error of the cell that raised."""
    import papermill

    try:
        papermill.execute_notebook(
            str(notebook),
            str(run_dir / runs.NOTEBOOK_FILE),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(notebook.parent),
            progress_bar=False,
            log_output=log_output,
        )
    except papermill.PapermillExecutionError as failure:
        return f"{failure.ename}: {failure.evalue}"
    return None


def _finish(run_dir: Path, record: dict, show_code: bool, settings: Settings) -> None:
    """The run's HTML report (where the notebook was written), its record and the index."""
    if (run_dir / runs.NOTEBOOK_FILE).is_file():
        header = reports.header_html(record, runs.read_summary(run_dir))
        reports.export_html(
            run_dir / runs.NOTEBOOK_FILE, run_dir / runs.REPORT_FILE, show_code, header
        )
    runs.write_record(run_dir, record)
    update_index(settings)


def run_notebook(
    name: str,
    parameters: dict | None = None,
    settings: Settings | None = None,
    run_dir: Path | None = None,
    show_code: bool = False,
    log_output: bool = False,
    after: Callable[[Path], None] | None = None,
) -> RunResult:
    """Execute one pipeline notebook with papermill and write its report and the index.

    Args:
        name: a key of ``NOTEBOOKS`` (``eda``, ``train``, ``evaluate``, ``retrain``).
        parameters: values for the notebook's ``parameters`` cell; ``run_dir`` is added.
        run_dir: where to write (default: a new folder under the reports folder).
        after: called with the run folder once the notebook has succeeded, before the report
            is written; a ``RuntimeError`` it raises fails the run with its message.

    Returns:
        The run, with the notebook's summary.

    Raises:
        PipelineError: unknown notebook, or a cell (or ``after``) raised; the report is still
            written and the message says where it is.
    """
    if name not in NOTEBOOKS:
        raise PipelineError(f"unknown notebook {name!r}; expected one of {sorted(NOTEBOOKS)}")
    settings = settings or get_settings()
    run_dir = run_dir or runs.new_run_dir(settings.reports_dir, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = {**(parameters or {}), "run_dir": str(run_dir)}
    record = {
        "name": name,
        "notebook": NOTEBOOKS[name],
        "parameters": parameters,
        "started_at": datetime.now(UTC).isoformat(),
        "status": "running",
    }
    runs.write_record(run_dir, record)
    started = time.monotonic()
    error = _execute(settings.notebooks_dir / NOTEBOOKS[name], run_dir, parameters, log_output)
    if after is not None and not error:
        try:
            after(run_dir)
        except RuntimeError as failure:
            error = str(failure)
    record.update(
        status="failed" if error else "succeeded",
        error=error,
        finished_at=datetime.now(UTC).isoformat(),
        duration_s=round(time.monotonic() - started, 1),
    )
    _finish(run_dir, record, show_code, settings)
    if error:
        raise PipelineError(
            f"{NOTEBOOKS[name]} failed: {error} (report: {run_dir / runs.REPORT_FILE})"
        )
    return RunResult(name, run_dir, record["status"], runs.read_summary(run_dir))
