"""Shared fixtures: small real data sets written to temporary folders."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# the suite serves with JAX unless told otherwise (INFERENCE_RUNTIME=openvino make test runs
# all of it on OpenVINO); tests/test_runtime.py covers OpenVINO, and JAX beside it, on its own
os.environ.setdefault("INFERENCE_RUNTIME", "jax")

import contextlib  # noqa: E402
import errno  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from devkit.processes import GUNICORN, free_port, wait_until_ready  # noqa: E402
from imgclf.config import PROJECT_ROOT, Settings  # noqa: E402
from imgclf.data import folders  # noqa: E402


def _test_seed() -> int:
    value = os.environ.get("IMGCLF_TEST_SEED", "1")
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"IMGCLF_TEST_SEED={value!r}: expected an integer") from None


#: The seed of every test that trains (``IMGCLF_TEST_SEED``, default 1). Tests marked
#: ``training`` assert what training learns with margins meant to hold for any seed and CPU:
#: ``IMGCLF_TEST_SEED=2 pytest -m training`` checks that they do.
TEST_SEED = _test_seed()


def write_image(path: Path, size=(12, 10), mode="L", value=128, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    channels = () if mode == "L" else (3,)
    pixels = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    folders.prepare_digits(root)
    return root


def png(seed: int, size: int = 12, darkest: int = 0) -> bytes:
    """A small grayscale PNG of random pixels drawn with ``seed``: a different image per seed
    (the uploads' deduplication tells them apart), the same one for the same seed. With
    ``darkest`` 150, bright noise: nothing like a digit, easy to learn as a class of its own."""
    import io

    pixels = np.random.default_rng(seed).integers(darkest, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but holds almost no data (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


#: The code a trained session model depends on: a change to any of them trains it anew.
MODEL_SOURCES = (
    "model/network.py",
    "model/batches.py",
    "model/training.py",
    "data/augment.py",
    "data/cache.py",
    "data/preprocessing.py",
    "data/folders.py",
    "model/posthoc.py",
    "model/novelty.py",
    "model/calibration.py",
)


def session_model_key() -> str:
    """What the session model is a function of: seed, training code, library versions."""
    import jax
    import keras
    import sklearn

    digest = hashlib.sha256(f"{TEST_SEED} {keras.__version__} {jax.__version__}".encode())
    digest.update(sklearn.__version__.encode())  # the digits data set comes from it
    for name in MODEL_SOURCES:
        digest.update((PROJECT_ROOT / "src" / "imgclf" / name).read_bytes())
    return digest.hexdigest()[:20]


def _train_session_model(root: Path) -> None:
    from imgclf.model import network, posthoc, registry, training

    network.set_seed(TEST_SEED)
    dataset = training.load_dataset(root / "data", 16, "grayscale")
    model = network.compile_model(network.build_model(10, dataset.input_shape))
    params = network.TrainParams(epochs=3, patience=3)
    history = training.fit(model, dataset, params, None, seed=TEST_SEED, verbose=0)
    metrics, probabilities = training.evaluate(model, dataset.test)
    trusted = posthoc.fit(model, dataset, params, TEST_SEED, probabilities)
    record = training.TrainingRecord(
        training.params_dict(params), history, "grayscale", trust=trusted
    )
    version = training.register(root / "models", model, dataset, metrics, record)
    registry.promote(root / "models", version)


@pytest.fixture(scope="session")
def trained_root(digits_dir, tmp_path_factory) -> Path:
    """A project folder with the digits data and one small trained, promoted model (16 px).

    The model is trained once per seed and version of the training code, then kept in
    ``.pytest_cache/imgclf-session-model/`` for later runs (the fast loop trains nothing).
    """
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(digits_dir / "train", root / "data" / "train")
    shutil.copytree(digits_dir / "test", root / "data" / "test")
    kept = PROJECT_ROOT / ".pytest_cache" / "imgclf-session-model" / session_model_key()
    if (kept / "current.json").is_file():
        shutil.copytree(kept, root / "models")
        return root
    _train_session_model(root)
    partial = kept.with_name(f".{kept.name}-{os.getpid()}")
    shutil.copytree(root / "models", partial, dirs_exist_ok=True)
    try:
        partial.rename(kept)
    except OSError:  # another run kept the same model first
        shutil.rmtree(partial, ignore_errors=True)
    return root


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server from Debian's package, on a free port; yields it.

    Skipped when PostgreSQL is not installed, unless ``IMGCLF_REQUIRE_POSTGRES`` is set (CI).
    """
    from devkit.postgres import PostgresMissing, TemporaryPostgres

    try:
        server = TemporaryPostgres()
    except PostgresMissing as missing:
        if os.environ.get("IMGCLF_REQUIRE_POSTGRES"):
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    with server:
        yield server


@pytest.fixture
def database_url(request, tmp_path) -> str:
    """A fresh, empty database: SQLite by default, PostgreSQL with ``indirect`` parameter."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return f"sqlite:///{tmp_path / 'imgclf.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database()


def make_project(trained_root: Path, folder: Path, database_url: str) -> Settings:
    """A private copy of ``trained_root`` (data, models) in ``folder``, with its own reports and
    a migrated database at ``database_url``."""
    from imgclf.store import migrations

    root = folder / "project"
    shutil.copytree(trained_root, root)
    (root / "reports").mkdir()
    migrations.upgrade(database_url)
    return Settings(
        project_root=root,
        data_dir=root / "data",
        models_dir=root / "models",
        reports_dir=root / "reports",
        notebooks_dir=PROJECT_ROOT / "notebooks",
        database_url=database_url,
        image_size=16,
        color_mode="grayscale",
        seed=1,
    )


@pytest.fixture
def project(trained_root, tmp_path, database_url) -> Settings:
    """A private copy of ``trained_root`` (data, models) with its own reports and database."""
    return make_project(trained_root, tmp_path, database_url)


@contextlib.contextmanager
def killed_on_exit(process: subprocess.Popen, log):
    """Kill ``process`` (if it still runs) and close its ``log`` on leaving."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def running_worker(project: Settings, folder: Path):
    """A job worker (``imgclf worker``) for ``project``, in its own process (log in
    ``folder``); killed on leaving."""
    log = open(folder / "worker.log", "w+")
    process = subprocess.Popen(  # with the admin token, as under make run (never to leak)
        [sys.executable, "-m", "imgclf.cli", "worker"],
        env={**os.environ, **project.as_environment(), "IMGCLF_ADMIN_TOKEN": TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    with killed_on_exit(process, log):
        yield process


@pytest.fixture
def worker(project, tmp_path):
    """A job worker (``imgclf worker``) for ``project``, in its own process."""
    with running_worker(project, tmp_path) as process:
        yield process


TOKEN = "integration-token"


def api_client(project: Settings, token: str):
    """Flask's test client of the API on ``project``, with ``token`` as the admin token, once
    its worker has loaded the model (in a background thread: no test should end, and no
    interpreter exit, in the middle of an XLA compilation)."""
    from dataclasses import replace

    from imgclf import config
    from serve.app import create_app

    service = replace(config.get_service_settings(), admin_token=token, reload_poll_s=0.1)
    client = create_app(project, service).test_client()
    wait_for(
        lambda: client.get("/health").get_json()["status"] != "loading", 60, "the model to load"
    )
    return client


def settled(job: dict) -> dict | None:
    """A retrain job's row once it has ended (None while it is queued or running)."""
    return job if job["state"] not in ("queued", "running") else None


def wait_for(condition, timeout_s: float, what: str):
    """Call ``condition`` until it returns something true (returned); fail after the timeout."""
    deadline = time.time() + timeout_s
    while not (value := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


@contextlib.contextmanager
def running_server(project: Settings, folder: Path):
    """Real gunicorn (2 workers) for ``project`` (log and metrics in ``folder``); yields
    ``(url, process)`` once it answers, and kills it on leaving."""
    import requests

    port = free_port()
    env = {
        **os.environ,
        **project.as_environment(),
        "PORT": str(port),
        "WORKERS": "2",
        "THREADS": "4",
        "IMGCLF_ADMIN_TOKEN": TOKEN,
        "IMGCLF_RELOAD_POLL_S": "0.5",
        "ACCESS_LOG": "",
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
    }
    env.pop("XLA_FLAGS", None)
    log = open(folder / "gunicorn.log", "w+")
    process = subprocess.Popen(
        GUNICORN,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        return requests.get(f"{url}/health", timeout=5).json()["status"] == "ok"

    with killed_on_exit(process, log):
        if not wait_until_ready(process, healthy, timeout_s=90):
            log.seek(0)
            pytest.fail(f"gunicorn did not start:\n{log.read()[-3000:]}")
        yield url, process


@pytest.fixture
def server(project, worker, tmp_path):
    """Real gunicorn (2 workers) and a job worker for ``project``; yields ``(url, process)``."""
    with running_server(project, tmp_path) as started:
        yield started


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems (skipped where mounting is not allowed)."""
    mounted = []

    def mount(where: Path, size: str = "256k") -> Path:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full (unbuffered: nothing left over)."""
    with open(folder / "filler", "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
