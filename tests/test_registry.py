import json
import stat

import pytest

from imgclf.model import registry


@pytest.fixture
def models(tmp_path):
    model_file = tmp_path / "m.keras"
    model_file.write_bytes(b"weights")
    models_dir = tmp_path / "models"
    versions = [registry.register(models_dir, model_file, {"n": i}) for i in range(3)]
    return models_dir, versions


def test_register_writes_immutable_numbered_versions(models):
    models_dir, versions = models
    assert versions == ["v0001", "v0002", "v0003"]
    meta = registry.metadata(models_dir, "v0002")
    assert meta["n"] == 1 and meta["version"] == "v0002" and "created_at" in meta
    mode = (models_dir / "v0002" / registry.MODEL_FILE).stat().st_mode
    assert not mode & stat.S_IWUSR
    assert not list(models_dir.glob(".v*"))


def test_promote_and_rollback_walk_the_history(models):
    models_dir, _ = models
    assert registry.current_version(models_dir) is None
    registry.promote(models_dir, "v0001")
    registry.promote(models_dir, "v0003")
    assert registry.current_version(models_dir) == "v0003"
    assert registry.rollback(models_dir)["version"] == "v0001"
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(models_dir)


def test_pointer_is_replaced_atomically_leaving_no_temporary_files(models):
    models_dir, _ = models
    registry.promote(models_dir, "v0002")
    pointer = json.loads((models_dir / registry.POINTER_FILE).read_text())
    assert pointer["version"] == "v0002"
    assert (models_dir / registry.POINTER_FILE).stat().st_mode & stat.S_IROTH
    assert not [p for p in models_dir.iterdir() if p.name.startswith(f".{registry.POINTER_FILE}")]


def test_promote_unknown_version_fails_and_keeps_pointer(models):
    models_dir, _ = models
    registry.promote(models_dir, "v0001")
    with pytest.raises(registry.RegistryError, match="v0042"):
        registry.promote(models_dir, "v0042")
    assert registry.current_version(models_dir) == "v0001"


def test_cli_lists_and_reports_errors_without_traceback(models, monkeypatch, capsys, tmp_path):
    from imgclf import cli

    models_dir, _ = models
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    assert cli.main(["models", "promote"]) == 1  # promote needs a version
    assert cli.main(["models", "promote", "v0002"]) == 1  # no database yet: says what to run
    assert "imgclf db upgrade" in capsys.readouterr().err
    assert cli.main(["db", "upgrade"]) == 0
    assert cli.main(["models", "promote", "v0002"]) == 0
    assert cli.main(["models", "list"]) == 0
    assert "* v0002" in capsys.readouterr().out
    assert cli.main(["models", "rollback"]) == 1
    assert "nothing to roll back" in capsys.readouterr().err


def test_a_staging_folder_left_by_a_killed_registration_is_removed_by_the_next(models, tmp_path):
    models_dir, _ = models
    abandoned = models_dir / ".v0004-x1y2z3"  # as a cancelled job's kernel would leave it
    abandoned.mkdir()
    (abandoned / registry.MODEL_FILE).write_bytes(b"half")
    (abandoned / registry.MODEL_FILE).chmod(stat.S_IRUSR)
    assert registry.list_versions(models_dir) == ["v0001", "v0002", "v0003"]
    assert registry.register(models_dir, tmp_path / "m.keras", {}) == "v0004"
    assert not abandoned.exists() and not list(models_dir.glob(".v*"))
