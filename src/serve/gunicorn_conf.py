"""gunicorn configuration: ``gunicorn -c python:serve.gunicorn_conf`` (what ``make serve`` runs).

Settings come from ``imgclf.config.get_server_settings``: ``PORT`` (8000), ``HOST``
(127.0.0.1), ``WORKERS`` (the number of cores, at most 4), ``THREADS`` (per worker, 4),
``TIMEOUT`` (60 s); ``ACCESS_LOG`` and ``LOG_LEVEL`` are gunicorn's own.

JAX: the master never imports it. The app is not preloaded, so each worker imports JAX and
loads the model after the fork. Threads are sized here, before any worker starts: with as many
workers as cores (the default), XLA's Eigen thread pool is switched off
(``--xla_cpu_multi_thread_eigen=false``) and BLAS/OpenMP get one thread each, so the workers
together use the cores once, not N times over. Fewer workers than cores get
``cores // workers`` BLAS/OpenMP threads each and XLA's default pool.
"""

import os
import shutil
import tempfile
import time

from imgclf.config import get_server_settings

_cores = os.cpu_count() or 1
_server = get_server_settings()
bind = f"{_server.host}:{_server.port}"
workers = _server.workers
threads = _server.threads
worker_class = "gthread"
timeout = _server.timeout_s
graceful_timeout = 30
preload_app = False  # JAX must be initialised in each worker, after the fork
wsgi_app = "serve.wsgi:app"
accesslog = _server.access_log
errorlog = "-"
loglevel = _server.log_level

_threads_per_worker = max(1, _cores // max(workers, 1))
if "XLA_FLAGS" not in os.environ and _threads_per_worker == 1:
    # one core per worker: XLA's Eigen thread pool would only fight the other workers
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, str(_threads_per_worker))
# on a GPU, each worker takes the memory its model needs rather than JAX's default 75 % of the
# card (several workers, and a training job, share it)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("IMGCLF_STARTED_AT", str(time.time()))

# prometheus_client multiprocess mode: one folder of sample files shared by the workers
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imgclf-metrics-")
    _own_metrics_dir = True
else:
    _own_metrics_dir = False


def on_starting(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # samples of an earlier run would be summed in
        os.remove(os.path.join(folder, name))
    server.log.info(
        "XLA_FLAGS=%r, %d worker(s) x %d thread(s)",
        os.environ.get("XLA_FLAGS", ""),
        workers,
        threads,
    )


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    # its mark that it served (serve.state.ready_mark): /ready waits for its successor
    mark = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"ready-{worker.pid}.flag")
    if os.path.exists(mark):
        os.remove(mark)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
