"""Run the pipeline's notebooks with papermill: one run folder each (``imgclf.runs``), an HTML
report (``imgclf.reports``) and a fresh ``reports/index.html``.

Command line::

    python -m imgclf.pipeline run train -p epochs 5 -p seed 1
    python -m imgclf.pipeline index
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
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
#: The notebooks that register a model: their runner reserves its version number in the
#: database first and makes it current afterwards (``imgclf.loop.commit``).
REGISTERING = ("train", "retrain")


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
        parameters: values for the notebook's ``parameters`` cell; ``run_dir`` is added, and
            for ``train`` and ``retrain`` the ``model_version`` reserved for the run (which is
            made current here once the notebook has ended, if the gate passed it).
        run_dir: where to write (default: a new folder under the reports folder).

    Returns:
        The run, with the notebook's summary.

    Raises:
        PipelineError: unknown notebook, or a cell raised (the report is still written and
            the message says where it is).
    """
    if name not in NOTEBOOKS:
        raise PipelineError(f"unknown notebook {name!r}; expected one of {sorted(NOTEBOOKS)}")
    settings = settings or get_settings()
    run_dir = run_dir or runs.new_run_dir(settings.reports_dir, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = {**(parameters or {}), "run_dir": str(run_dir)}
    ledger = _ledger(settings) if name in REGISTERING else None
    if ledger is not None:
        parameters["model_version"] = ledger.reserve_version(settings.models_dir)
    try:
        return _run(name, parameters, settings, run_dir, show_code, log_output, ledger)
    finally:
        if ledger is not None:
            ledger.engine.dispose()


def _ledger(settings: Settings):
    """The database's model pointer (``store.pointer``) for a registering run.

    Raises:
        PipelineError: the database cannot be used (the message says why, and what to run).
    """
    from imgclf.config import ConfigError
    from imgclf.store import UNAVAILABLE, Store, unavailable

    try:
        return Store(settings.database_url)
    except ConfigError as error:
        raise PipelineError(f"the model registry's database: {error}") from None
    except UNAVAILABLE as error:
        raise PipelineError(
            f"the model registry's database is unavailable ({unavailable(error)}): version "
            "numbers and the current model live there; nothing was run"
        ) from None


def _run(name, parameters, settings, run_dir, show_code, log_output, ledger) -> RunResult:
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
    if ledger is not None and not error:
        from imgclf.loop import commit

        try:
            summary = runs.read_summary(run_dir)
            runs.write_summary(
                run_dir, **commit.settle_summary(summary, settings.models_dir, ledger)
            )
        except RuntimeError as failure:
            error = str(failure)
    record.update(
        status="failed" if error else "succeeded",
        error=error,
        finished_at=datetime.now(UTC).isoformat(),
        duration_s=round(time.monotonic() - started, 1),
    )
    if (run_dir / runs.NOTEBOOK_FILE).is_file():
        header = reports.header_html(record, runs.read_summary(run_dir))
        reports.export_html(
            run_dir / runs.NOTEBOOK_FILE, run_dir / runs.REPORT_FILE, show_code, header
        )
    runs.write_record(run_dir, record)
    update_index(settings)
    if error:
        raise PipelineError(
            f"{NOTEBOOKS[name]} failed: {error} (report: {run_dir / runs.REPORT_FILE})"
        )
    return RunResult(name, run_dir, record["status"], runs.read_summary(run_dir))


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
        print(update_index(settings))
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
    shown = {k: v for k, v in result.summary.items() if k in reports.INDEX_FIELDS}
    print(f"{args.notebook}: {json.dumps(shown)}\nreport: {result.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
