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

from imgclf.config.readers import (
    SECRET_NAMES,
    ConfigError,
    _database_url,
    _float,
    _int,
    _path,
    _read_all,
    _secret,
)

#: The repository root: src/imgclf/config/__init__.py -> four levels up.
PROJECT_ROOT = Path(__file__).resolve().parents[3]

#: Image file endings accepted everywhere (compared in lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

#: Files that operating systems drop into folders; never data, never an error.
IGNORED_FILE_NAMES = ("thumbs.db", "desktop.ini")

COLOR_MODES = ("grayscale", "rgb")
#: How training uses several devices (``DISTRIBUTION``); see ``model.distribute``.
DISTRIBUTIONS = ("auto", "data_parallel", "none")


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
    distribution = os.environ.get("DISTRIBUTION") or "auto"
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"DISTRIBUTION={distribution!r}: expected one of {', '.join(DISTRIBUTIONS)}"
        )
    decode_workers = _int("DECODE_WORKERS", 0)
    if not 0 <= decode_workers <= 1024:
        raise ConfigError(f"DECODE_WORKERS={decode_workers}: expected 0 (all cores) to 1024")
    return Settings(
        project_root=PROJECT_ROOT,
        data_dir=data_dir,
        models_dir=_path("MODELS_DIR", PROJECT_ROOT / "models"),
        reports_dir=_path("REPORTS_DIR", PROJECT_ROOT / "reports"),
        notebooks_dir=_path("NOTEBOOKS_DIR", PROJECT_ROOT / "notebooks"),
        database_url=_database_url(f"sqlite:///{data_dir / 'imgclf.db'}"),
        image_size=image_size,
        color_mode=color_mode,
        seed=_int("SEED", 42),
        cache_dir=_path("CACHE_DIR", None),
        journal_dir=_path("JOURNAL_DIR", None),
        decode_workers=decode_workers,
        distribution=distribution,
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
    """Return the API's settings from ``IMGCLF_*`` environment variables.

    ``IMGCLF_ADMIN_TOKEN`` (empty: admin endpoints answer 503), ``IMGCLF_MAX_REQUEST_MB``
    (100), ``IMGCLF_MAX_BATCH`` (64 images), ``IMGCLF_RELOAD_POLL_S`` (0.5),
    ``IMGCLF_UPLOAD_MAX_FILES`` (2000), ``IMGCLF_UPLOAD_MAX_FILE_MB`` (20),
    ``IMGCLF_UPLOAD_MAX_TOTAL_MB`` (200, uncompressed), ``IMGCLF_PREDICT_MAX_MP`` (25
    megapixels for /predict: a 24 MP camera photo passes, a 7000x7000 decode bomb does not;
    uploads keep the 50 MP limit), ``TRUSTED_PROXIES`` (0; 1 behind nginx: the client's
    address is then the one nginx saw, from X-Forwarded-For), ``IMGCLF_STARTED_AT`` (set by
    gunicorn).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    default = UploadLimits()
    mb = 1024 * 1024
    values = _read_all(
        {
            "IMGCLF_MAX_REQUEST_MB": (_int, 100, 1, 10_000),
            "IMGCLF_MAX_BATCH": (_int, 64, 1, 1024),
            "IMGCLF_RELOAD_POLL_S": (_float, 0.5, 0.05, 3600),
            "IMGCLF_UPLOAD_MAX_FILES": (_int, default.max_files, 1, 100_000),
            "IMGCLF_UPLOAD_MAX_FILE_MB": (_int, default.max_file_bytes // mb, 1, 1000),
            "IMGCLF_UPLOAD_MAX_TOTAL_MB": (_int, default.max_total_bytes // mb, 1, 100_000),
            "IMGCLF_PREDICT_MAX_MP": (_float, 25.0, 0.01, MAX_IMAGE_PIXELS / 1e6),
            "TRUSTED_PROXIES": (_int, 0, 0, 10),
        }
    )
    return ServiceSettings(
        admin_token=_secret("IMGCLF_ADMIN_TOKEN"),
        max_request_bytes=values["IMGCLF_MAX_REQUEST_MB"] * mb,
        max_batch=values["IMGCLF_MAX_BATCH"],
        reload_poll_s=values["IMGCLF_RELOAD_POLL_S"],
        started_at=_float("IMGCLF_STARTED_AT", time.time()),
        upload_limits=UploadLimits(
            max_files=values["IMGCLF_UPLOAD_MAX_FILES"],
            max_file_bytes=values["IMGCLF_UPLOAD_MAX_FILE_MB"] * mb,
            max_total_bytes=values["IMGCLF_UPLOAD_MAX_TOTAL_MB"] * mb,
        ),
        predict_max_pixels=int(values["IMGCLF_PREDICT_MAX_MP"] * 1e6),
        trusted_proxies=values["TRUSTED_PROXIES"],
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
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def get_server_settings() -> ServerSettings:
    """Return ``HOST`` (127.0.0.1), ``PORT`` (8000), ``WORKERS`` (cores, at most 4),
    ``THREADS`` (4 per worker), ``TIMEOUT`` (60 s), ``DASHBOARD_PORT`` (5006),
    ``IMGCLF_API_URL`` (the API's own address), ``IMGCLF_DASHBOARD_REFRESH_MS`` (5000),
    ``ACCESS_LOG`` (``-``: standard output; empty: none), ``LOG_LEVEL`` (info),
    ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's folder of the workers' samples),
    ``DASHBOARD_PASSWORD`` and ``DASHBOARD_COOKIE_SECRET`` (the dashboard's login; required
    when it listens beyond the loopback), ``DASHBOARD_ORIGINS`` (comma-separated ``host:port``
    a browser may open the dashboard at, e.g. behind a port mapping or a proxy).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    host = os.environ.get("HOST", "127.0.0.1")
    log_level = os.environ.get("LOG_LEVEL", "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    values = _read_all(
        {
            "PORT": (_int, 8000, 1, 65535),
            "WORKERS": (_int, min(os.cpu_count() or 1, 4), 1, 256),
            "THREADS": (_int, 4, 1, 256),
            "TIMEOUT": (_int, 60, 1, 3600),
            "DASHBOARD_PORT": (_int, 5006, 1, 65535),
            "IMGCLF_DASHBOARD_REFRESH_MS": (_int, 5000, 200, 3_600_000),
        }
    )
    return ServerSettings(
        host=host,
        port=values["PORT"],
        workers=values["WORKERS"],
        threads=values["THREADS"],
        timeout_s=values["TIMEOUT"],
        dashboard_port=values["DASHBOARD_PORT"],
        api_url=os.environ.get("IMGCLF_API_URL") or f"http://{host}:{values['PORT']}",
        dashboard_refresh_ms=values["IMGCLF_DASHBOARD_REFRESH_MS"],
        access_log=os.environ.get("ACCESS_LOG", "-") or None,
        log_level=log_level,
        metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None,
        dashboard_password=_secret("DASHBOARD_PASSWORD") or None,
        dashboard_cookie_secret=_secret("DASHBOARD_COOKIE_SECRET") or None,
        dashboard_origins=tuple(
            o.strip() for o in os.environ.get("DASHBOARD_ORIGINS", "").split(",") if o.strip()
        ),
    )


_environment_lock = threading.Lock()


def backbone_cache_dir() -> Path:
    """Where converted pretrained weights are kept (``imgclf.model.efficientnet_lite``):
    ``IMGCLF_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgclf`` (``~/.cache/imgclf``)."""
    explicit = os.environ.get("IMGCLF_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgclf"


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
    "ConfigError",
    "RUNTIMES",
    "LoopSettings",
    "RuntimeSettings",
    "get_loop_settings",
    "get_runtime_settings",
    "openvino_export_environment",
]
