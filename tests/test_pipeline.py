import json

import pytest

from imgclf import pipeline, reports, runs
from imgclf.config import get_settings


@pytest.fixture
def settings(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(digits_dir))
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("REPORTS_DIR", str(tmp_path / "reports"))
    return get_settings()


@pytest.mark.slow
def test_run_notebook_writes_notebook_report_summary_and_index(settings):
    result = pipeline.run_notebook("eda", {"image_size": 16}, settings)
    assert result.status == "succeeded"
    assert result.summary["images"] == 1437
    html = result.report.read_text()
    assert "data:image/png" in html and "The classes are balanced" in html
    assert 'class="highlight' not in html  # code cells are hidden by default...
    assert "<header" in html and "01_eda.ipynb" in html and "succeeded" in html  # the header
    shown = reports.export_html(
        result.run_dir / "notebook.ipynb", result.run_dir / "code.html", show_code=True
    )
    assert 'class="highlight' in shown.read_text()  # ...and shown on request
    index = (settings.reports_dir / "index.html").read_text()
    assert f'href="{result.run_dir.name}/report.html"' in index
    record = json.loads((result.run_dir / runs.RUN_FILE).read_text())
    assert record["parameters"]["image_size"] == 16 and record["duration_s"] > 0


@pytest.mark.slow
def test_failed_notebook_still_gets_a_report_and_names_it(settings):
    # evaluate with no model in the registry fails in its first code cell
    with pytest.raises(pipeline.PipelineError, match="no current model") as raised:
        pipeline.run_notebook("evaluate", {}, settings)
    [run] = runs.list_runs(settings.reports_dir)
    assert run["status"] == "failed" and "RegistryError" in run["error"]
    assert str(settings.reports_dir / run["folder"] / "report.html") in str(raised.value)
    assert 'class="failed"' in (settings.reports_dir / "index.html").read_text()


def test_write_summary_merges_and_is_a_no_op_without_run_dir(tmp_path):
    assert runs.write_summary("", a=1) == {"a": 1}
    runs.write_summary(tmp_path, a=1, b=2)
    assert runs.write_summary(tmp_path, b=3) == {"a": 1, "b": 3}
    assert runs.read_summary(tmp_path) == {"a": 1, "b": 3}


def test_index_is_sortable_and_marks_the_run_of_the_current_version(tmp_path):
    for name, version, f1 in (("train", "v0001", 0.91), ("retrain", "v0002", 0.95)):
        run_dir = runs.new_run_dir(tmp_path, name)
        runs.write_record(run_dir, {"name": name, "status": "succeeded", "started_at": "2026"})
        runs.write_summary(run_dir, version=version, f1_macro=f1)
    page = reports.update_index(tmp_path, current_version="v0002").read_text()
    current_rows = [row for row in page.split("<tr") if 'class="succeeded current"' in row]
    assert len(current_rows) == 1 and "v0002" in current_rows[0] and "badge" in current_rows[0]
    assert 'data-sort="0.95"' in page and "addEventListener" in page


def test_unknown_notebook_is_refused(settings):
    with pytest.raises(pipeline.PipelineError, match="unknown notebook"):
        pipeline.run_notebook("deploy", {}, settings)
