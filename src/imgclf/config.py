"""Settings: every path and tunable comes from here, read from the environment at call time.

Nothing is created or loaded at import. ``get_settings()`` is cheap; call it where needed so
that tests (and the API) can point the whole pipeline elsewhere with environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The repository root: src/imgclf/config.py -> three levels up.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Image file endings accepted everywhere (compared in lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

#: Files that operating systems drop into folders; never data, never an error.
IGNORED_FILE_NAMES = ("thumbs.db", "desktop.ini")

COLOR_MODES = ("grayscale", "rgb")


class ConfigError(ValueError):
    """A setting has a value the pipeline cannot use."""


def _path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None


@dataclass(frozen=True)
class Settings:
    """Where the pipeline reads and writes, and the input format of new models."""

    project_root: Path
    data_dir: Path
    models_dir: Path
    reports_dir: Path
    notebooks_dir: Path
    database_url: str
    image_size: int
    color_mode: str
    seed: int

    @property
    def train_dir(self) -> Path:
        return self.data_dir / "train"

    @property
    def test_dir(self) -> Path:
        return self.data_dir / "test"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def as_environment(self) -> dict[str, str]:
        """These settings as the environment variables ``get_settings`` reads (for children)."""
        return {
            "DATA_DIR": str(self.data_dir),
            "MODELS_DIR": str(self.models_dir),
            "REPORTS_DIR": str(self.reports_dir),
            "NOTEBOOKS_DIR": str(self.notebooks_dir),
            "DATABASE_URL": self.database_url,
            "IMAGE_SIZE": str(self.image_size),
            "COLOR_MODE": self.color_mode,
            "SEED": str(self.seed),
        }


def get_settings() -> Settings:
    """Return the settings from environment variables, with defaults under the project root.

    Raises:
        ConfigError: a variable holds a value of the wrong kind (e.g. ``IMAGE_SIZE=big``).
    """
    data_dir = _path("DATA_DIR", PROJECT_ROOT / "data")
    color_mode = os.environ.get("COLOR_MODE", "grayscale").lower()
    if color_mode not in COLOR_MODES:
        raise ConfigError(f"COLOR_MODE={color_mode!r}: expected one of {', '.join(COLOR_MODES)}")
    image_size = _int("IMAGE_SIZE", 32)
    if not 8 <= image_size <= 1024:
        raise ConfigError(f"IMAGE_SIZE={image_size}: expected 8 to 1024 pixels")
    return Settings(
        project_root=PROJECT_ROOT,
        data_dir=data_dir,
        models_dir=_path("MODELS_DIR", PROJECT_ROOT / "models"),
        reports_dir=_path("REPORTS_DIR", PROJECT_ROOT / "reports"),
        notebooks_dir=_path("NOTEBOOKS_DIR", PROJECT_ROOT / "notebooks"),
        database_url=os.environ.get("DATABASE_URL", f"sqlite:///{data_dir / 'imgclf.db'}"),
        image_size=image_size,
        color_mode=color_mode,
        seed=_int("SEED", 42),
    )
