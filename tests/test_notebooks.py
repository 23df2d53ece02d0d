"""All four notebooks, in pipeline order, under nbval, with fast parameters on temporary folders.

papermill injects the fast parameters (prepare_only: nothing is executed then); nbval then
executes every cell of the parameterised copies in a real kernel and fails on any error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import papermill
import pytest

from imgclf.config import PROJECT_ROOT
from imgclf.model import registry

FAST = {"epochs": 2, "patience": 2}
NOTEBOOKS = {
    "01_eda.ipynb": {},
    # backbone="auto" (the default) decides on these digits; should it choose the backbone on
    # a fast machine, it trains at 32 px for one epoch of fine-tuning
    "02_train.ipynb": {**FAST, "image_size": 16, "backbone_size": 32, "fine_tune_epochs": 1},
    "03_evaluate.ipynb": {},
    "04_retrain.ipynb": FAST,
}


@pytest.mark.slow
def test_all_notebooks_pass_nbval(digits_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(digits_dir, data_dir)
    # an upload batch bringing more "3"s and a new class, so retraining widens the head
    for index, source in enumerate(sorted((data_dir / "train" / "3").glob("*.png"))[:5]):
        for label in ("3", "three-ish"):
            target = data_dir / "uploads" / "batch1" / label / f"up{index}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    models_dir, prepared = tmp_path / "models", tmp_path / "prepared"
    prepared.mkdir()
    paths = []
    for name, parameters in NOTEBOOKS.items():
        path = prepared / name
        papermill.execute_notebook(
            str(PROJECT_ROOT / "notebooks" / name),
            str(path),
            parameters=parameters,
            prepare_only=True,
        )
        paths.append(str(path))
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "MODELS_DIR": str(models_dir),
        "REPORTS_DIR": str(tmp_path / "reports"),
        "KERAS_BACKEND": "jax",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(prepared),
            *paths,
        ],
        cwd=prepared,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    versions = registry.list_versions(models_dir)
    assert len(versions) == 2  # train, then the retrain candidate
    candidate = json.loads((models_dir / versions[1] / registry.METADATA_FILE).read_text())
    assert candidate["class_names"][-1] == "three-ish"
    assert candidate["parent_version"] == versions[0]
    assert candidate["uploads_used"] == 10
    # the upload (stored before uploads were split) gave the new class no test image: the gate
    # keeps it from being served, and says how many test images it needs
    assert candidate["gate"]["promote"] is False
    assert candidate["gate"]["needs"] == {"three-ish": 5}
    assert registry.current_version(models_dir) == versions[0]
