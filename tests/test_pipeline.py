import json

import pytest

from imgclf import pipeline
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
    shown = pipeline.export_html(
        result.run_dir / "notebook.ipynb", result.run_dir / "code.html", show_code=True
    )
    assert 'class="highlight' in shown.read_text()  # ...and shown on request
    index = (settings.reports_dir / "index.html").read_text()
    assert f'href="{result.run_dir.name}/report.html"' in index
    record = json.loads((result.run_dir / pipeline.RUN_FILE).read_text())
    assert record["parameters"]["image_size"] == 16 and record["duration_s"] > 0


@pytest.mark.slow
def test_failed_notebook_still_gets_a_report_and_names_it(settings):
    # evaluate with no model in the registry fails in its first code cell
    with pytest.raises(pipeline.PipelineError, match="no current model") as raised:
        pipeline.run_notebook("evaluate", {}, settings)
    [run] = pipeline.list_runs(settings.reports_dir)
    assert run["status"] == "failed" and "RegistryError" in run["error"]
    assert str(settings.reports_dir / run["folder"] / "report.html") in str(raised.value)
    assert 'class="failed"' in (settings.reports_dir / "index.html").read_text()


def test_write_summary_merges_and_is_a_no_op_without_run_dir(tmp_path):
    assert pipeline.write_summary("", a=1) == {"a": 1}
    pipeline.write_summary(tmp_path, a=1, b=2)
    assert pipeline.write_summary(tmp_path, b=3) == {"a": 1, "b": 3}
    assert pipeline.read_summary(tmp_path) == {"a": 1, "b": 3}


def test_unknown_notebook_is_refused(settings):
    with pytest.raises(pipeline.PipelineError, match="unknown notebook"):
        pipeline.run_notebook("deploy", {}, settings)
