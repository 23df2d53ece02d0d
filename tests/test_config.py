"""Settings: every one declared once (``variables.toml``), read by a getter, documented by a
generated page, a bad value named in the error."""

from __future__ import annotations

import pytest

from imgclf import config
from imgclf.config import catalogue, reference

GETTERS = (
    config.get_settings, config.get_service_settings, config.get_server_settings,
    config.get_loop_settings, config.get_runtime_settings, config.backbone_cache_dir,
    config.feature_memo,
)  # fmt: skip


def test_every_declared_variable_is_read_by_a_getter_and_nothing_else_is(monkeypatch):
    read = set()
    original = catalogue.Variable.read
    monkeypatch.setattr(
        catalogue.Variable, "read", lambda self: read.add(self.name) or original(self)
    )
    for getter in GETTERS:
        getter()  # a name a getter reads that is not declared raises KeyError here
    assert read == set(catalogue.BY_NAME)


def test_the_configuration_reference_is_current():
    assert reference.main(["--check"]) == 0, "run: python -m imgclf.config.reference"
    page = reference.PAGE.read_text()
    assert all(f"`{name}`" in page for name in catalogue.BY_NAME)


@pytest.mark.parametrize("name", ["IMAGE_SIZE", "COLOR_MODE", "BATCH_MAX_SIZE", "GATE_ALPHA"])
def test_a_bad_value_of_any_group_is_refused_with_its_name(monkeypatch, name):
    monkeypatch.setenv(name, "-7")
    with pytest.raises(config.ConfigError, match=name):
        for getter in GETTERS:
            getter()


def test_service_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMGCLF_MAX_BATCH", "8")
    monkeypatch.setenv("IMGCLF_UPLOAD_MAX_FILE_MB", "2")
    service = config.get_service_settings()
    assert service.max_batch == 8 and service.upload_limits.max_file_bytes == 2 * 1024 * 1024
    assert service.upload_limits.max_pixels == config.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    "name, value",
    [
        ("IMGCLF_MAX_BATCH", "0"),
        ("IMGCLF_MAX_REQUEST_MB", "lots"),
        ("IMGCLF_RELOAD_POLL_S", "-1"),
        ("WORKERS", "0"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError, match=name):
        config.get_service_settings()
        config.get_server_settings()


def test_a_worker_without_the_shared_folders_is_refused_with_the_setting(tmp_path):
    from dataclasses import replace

    from imgclf.loop import worker

    (tmp_path / "models").mkdir()
    (tmp_path / "reports").mkdir()
    settings = replace(
        config.get_settings(),
        data_dir=tmp_path / "not-mounted",
        models_dir=tmp_path / "models",
        reports_dir=tmp_path / "reports",
    )
    with pytest.raises(config.ConfigError, match="DATA_DIR=.*not-mounted.*no such folder"):
        worker.check_folders(settings)
    worker.check_folders(replace(settings, data_dir=tmp_path))  # all there: no error
