"""Settings: every path, limit and tunable comes from here, read from the environment at call time.

Three groups: ``Settings`` (the pipeline: folders, database, input format), ``ServiceSettings``
(the REST API: token, request and upload limits, reload poll) and ``ServerSettings`` (gunicorn
and the dashboard: host, ports, workers). A bad value raises ``ConfigError`` naming the
variable.

Nothing is created or loaded at import. ``get_settings()`` is cheap; call it where needed so
that tests (and the API) can point the whole pipeline elsewhere with environment variables.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imgclf.config.catalogue import BY_NAME, PROJECT_ROOT, value, values
from imgclf.config.readers import SECRET_NAMES, ConfigError, _database_url

#: Image file endings accepted everywhere (compared in lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

#: Files that operating systems drop into folders; never data, never an error.
IGNORED_FILE_NAMES = ("thumbs.db", "desktop.ini")

COLOR_MODES = BY_NAME["COLOR_MODE"].choices
#: How training uses several devices (``DISTRIBUTION``); see ``model.distribute``.
DISTRIBUTIONS = BY_NAME["DISTRIBUTION"].choices


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
    cache_dir: Path | None = None
    decode_workers: int = 0
    distribution: str = "auto"
    journal_dir: Path | None = None

    @property
    def prediction_journal_dir(self) -> Path:
        """The prediction log's journal (``JOURNAL_DIR``; default ``<DATA_DIR>/journal``): a
        local folder each API worker appends its predictions to before the database has them
        (``imgclf.store.journal``)."""
        return self.journal_dir or self.data_dir / "journal"

    @property
    def decoded_cache_dir(self) -> Path:
        """Where decoded images are cached (``CACHE_DIR``; default ``<DATA_DIR>/.cache``)."""
        return self.cache_dir or self.data_dir / ".cache"

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
            "CACHE_DIR": str(self.decoded_cache_dir),
            "DECODE_WORKERS": str(self.decode_workers),
            "DISTRIBUTION": self.distribution,
        }


def get_settings() -> Settings:
    """Return the settings from environment variables (``variables.toml``: the ``pipeline``
    group), with defaults under the project root.

    Raises:
        ConfigError: a variable holds a value of the wrong kind (e.g. ``IMAGE_SIZE=big``).
    """
    data_dir = value("DATA_DIR")
    return Settings(
        project_root=PROJECT_ROOT,
        data_dir=data_dir,
        models_dir=value("MODELS_DIR"),
        reports_dir=value("REPORTS_DIR"),
        notebooks_dir=value("NOTEBOOKS_DIR"),
        database_url=_database_url(
            value("DATABASE_URL") or f"sqlite:///{data_dir / 'imgclf.db'}",
            value("DATABASE_PASSWORD"),
        ),
        image_size=value("IMAGE_SIZE"),
        color_mode=value("COLOR_MODE"),
        seed=value("SEED"),
        cache_dir=value("CACHE_DIR"),
        journal_dir=value("JOURNAL_DIR"),
        decode_workers=value("DECODE_WORKERS"),
        distribution=value("DISTRIBUTION"),
    )


#: Images above this many pixels are refused everywhere (training, serving, uploads): a
#: decompression-bomb guard stricter than Pillow's.
MAX_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class UploadLimits:
    """How much one upload of labelled images may hold."""

    max_files: int = 2000
    max_file_bytes: int = 20 * 1024 * 1024
    max_total_bytes: int = 200 * 1024 * 1024  # uncompressed, for zips
    max_ratio: float = 100.0  # uncompressed / compressed size of one zip entry
    max_pixels: int = MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ServiceSettings:
    """The REST API's settings (read once per worker by ``serve.app.create_app``)."""

    admin_token: str
    max_request_bytes: int
    max_batch: int
    reload_poll_s: float
    started_at: float
    upload_limits: UploadLimits
    predict_max_pixels: int = 25_000_000
    trusted_proxies: int = 0


def get_service_settings() -> ServiceSettings:
    """Return the API's settings (``variables.toml``: the ``api`` group).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    mb = 1024 * 1024
    return ServiceSettings(
        admin_token=value("IMGCLF_ADMIN_TOKEN"),
        max_request_bytes=value("IMGCLF_MAX_REQUEST_MB") * mb,
        max_batch=value("IMGCLF_MAX_BATCH"),
        reload_poll_s=value("IMGCLF_RELOAD_POLL_S"),
        started_at=value("IMGCLF_STARTED_AT") or time.time(),
        upload_limits=UploadLimits(
            max_files=value("IMGCLF_UPLOAD_MAX_FILES"),
            max_file_bytes=value("IMGCLF_UPLOAD_MAX_FILE_MB") * mb,
            max_total_bytes=value("IMGCLF_UPLOAD_MAX_TOTAL_MB") * mb,
        ),
        predict_max_pixels=int(value("IMGCLF_PREDICT_MAX_MP") * 1e6),
        trusted_proxies=value("TRUSTED_PROXIES"),
    )


@dataclass(frozen=True)
class ServerSettings:
    """How gunicorn runs the API, and where the dashboard finds it."""

    host: str
    port: int
    workers: int
    threads: int
    timeout_s: int
    dashboard_port: int
    api_url: str
    dashboard_refresh_ms: int
    access_log: str | None = "-"
    log_level: str = "info"
    metrics_dir: str | None = None
    dashboard_password: str | None = None
    dashboard_cookie_secret: str | None = None
    #: ``host:port`` addresses a browser may open the dashboard at, besides its own
    dashboard_origins: tuple[str, ...] = ()


#: ``LOG_LEVEL``'s values (gunicorn's, and the worker's too).
LOG_LEVELS = BY_NAME["LOG_LEVEL"].choices


def get_server_settings() -> ServerSettings:
    """Return how gunicorn and the dashboard run (``variables.toml``: the ``server`` group).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    read = values(
        "HOST",
        "PORT",
        "WORKERS",
        "THREADS",
        "TIMEOUT",
        "DASHBOARD_PORT",
        "IMGCLF_API_URL",
        "IMGCLF_DASHBOARD_REFRESH_MS",
        "ACCESS_LOG",
        "LOG_LEVEL",
        "PROMETHEUS_MULTIPROC_DIR",
        "DASHBOARD_PASSWORD",
        "DASHBOARD_COOKIE_SECRET",
        "DASHBOARD_ORIGINS",
    )
    origins = (origin.strip() for origin in read["DASHBOARD_ORIGINS"].split(","))
    return ServerSettings(
        host=read["HOST"],
        port=read["PORT"],
        workers=read["WORKERS"],
        threads=read["THREADS"],
        timeout_s=read["TIMEOUT"],
        dashboard_port=read["DASHBOARD_PORT"],
        api_url=read["IMGCLF_API_URL"] or f"http://{read['HOST']}:{read['PORT']}",
        dashboard_refresh_ms=read["IMGCLF_DASHBOARD_REFRESH_MS"],
        access_log=read["ACCESS_LOG"] or None,
        log_level=read["LOG_LEVEL"],
        metrics_dir=read["PROMETHEUS_MULTIPROC_DIR"] or None,
        dashboard_password=read["DASHBOARD_PASSWORD"] or None,
        dashboard_cookie_secret=read["DASHBOARD_COOKIE_SECRET"] or None,
        dashboard_origins=tuple(origin for origin in origins if origin),
    )


_environment_lock = threading.Lock()


def backbone_cache_dir() -> Path:
    """Where converted pretrained weights are kept (``imgclf.model.efficientnet_lite``):
    ``IMGCLF_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgclf`` (``~/.cache/imgclf``)."""
    explicit = value("IMGCLF_CACHE_DIR")
    if explicit:
        return explicit
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgclf"


def feature_memo() -> bool:
    """Whether a training run keeps a frozen backbone's features (``IMGCLF_FEATURE_MEMO``;
    ``imgclf.model.featurememo``)."""
    return bool(value("IMGCLF_FEATURE_MEMO"))


def environment_without_secrets() -> dict[str, str]:
    """This process's environment less the secrets (``SECRET_NAMES``), for a child process
    that needs none of them."""
    return {name: v for name, v in os.environ.items() if not SECRET_NAMES.search(name)}


@contextlib.contextmanager
def secrets_hidden() -> Iterator[list[str]]:
    """Remove the secrets from this process's environment while a kernel is started and runs
    (a kernel inherits it); yields their names, puts them back after."""
    with _environment_lock:
        hidden = {
            name: os.environ.pop(name) for name in list(os.environ) if SECRET_NAMES.search(name)
        }
        try:
            yield sorted(hidden)
        finally:
            os.environ.update(hidden)


# the pipeline loop's and the inference runtime's settings, in modules of their own
from imgclf.config.loop import GATE_RANGES, LoopSettings, get_loop_settings  # noqa: E402
from imgclf.config.runtime import (  # noqa: E402
    RUNTIMES,
    RuntimeSettings,
    get_runtime_settings,
    openvino_export_environment,
)

__all__ = [
    "GATE_RANGES",
    "SECRET_NAMES",
    "environment_without_secrets",
    "ConfigError",
    "RUNTIMES",
    "LoopSettings",
    "RuntimeSettings",
    "get_loop_settings",
    "get_runtime_settings",
    "openvino_export_environment",
]
