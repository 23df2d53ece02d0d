"""The audit of all the data, as a job of the worker (``POST /data/issues/scan``).

A scan checks, with the served model's features, the labels of every upload again
(``labelcheck.check_batch``, each batch's audit rewritten) and of the whole training set out of
fold (``labelcheck.check_training``), lists the uploads the unknown answer calls unlike every
class, and finds the training images that nearly duplicate a test image (``audit
.training_leaks``, on content). What it found is kept in ``uploads/.audit/`` and shown by
``GET /data/issues``.

The worker runs it in a child process (``python -m imgclf.loop.scan RUN_DIR``) without the
secrets in its environment, so that the worker itself never imports Keras and keeps its small
idle footprint; the child writes ``summary.json`` in the run folder, the job's result.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from imgclf import runs
from imgclf.config import Settings, environment_without_secrets, get_settings
from imgclf.data import audit, curation
from imgclf.loop import labelcheck
from imgclf.store import JobConflict, JobState, Store

KIND = "scan"
log = logging.getLogger(__name__)


def queue(store: Store, settings: Settings, trigger: str = "manual") -> dict:
    """Queue a scan for a worker; returns the job.

    Raises:
        store.JobConflict: a scan is already queued or running.
    """
    run_dir = runs.new_run_dir(settings.reports_dir, KIND)
    try:
        return store.create_job(KIND, {}, str(run_dir), trigger, "audit of all the data")
    except JobConflict:
        run_dir.rmdir()
        raise


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def scan(predictor, data_dir: Path) -> dict:
    """Audit every upload and the training set with ``predictor``'s features (see the
    module); returns what was found, in counts."""
    uploads_dir = data_dir / "uploads"
    started = time.perf_counter()
    batches = [batch.name for batch in curation.batches(uploads_dir)]
    upload_issues = outliers = 0
    for batch in batches:
        check = labelcheck.check_batch(predictor, data_dir, batch)
        audit.record_label_check(
            uploads_dir, batch, {"state": "done", **asdict(check), "computed_at": _now()}
        )
        upload_issues, outliers = upload_issues + len(check.issues), outliers + len(check.outliers)
    training = labelcheck.check_training(predictor, data_dir)
    leaks = audit.training_leaks(data_dir)
    audit.write_training(
        uploads_dir,
        {
            "state": "done",
            "model_version": predictor.version,
            "computed_at": _now(),
            "checked": training.checked,
            "note": training.note,
            "label_issues": training.issues,
            "leaks": leaks,
        },
    )
    return {
        "model_version": predictor.version,
        "batches": len(batches),
        "upload_label_issues": upload_issues,
        "outliers": outliers,
        "training_images": training.checked,
        "training_label_issues": len(training.issues),
        "training_leaks": len(leaks),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_job(store: Store, job: dict, settings: Settings) -> JobState:
    """Run a claimed scan in a child process and record its end; the job's heartbeat is kept
    and a cancel request kills the child (``jobs.Watcher``)."""
    from imgclf.loop import jobs

    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    environment = environment_without_secrets()
    environment.update(settings.as_environment())
    environment.pop("DATABASE_URL", None)  # the child reads files only
    watcher = jobs.Watcher(store, job["id"], run_dir)
    watcher.start()
    try:
        with open(run_dir / runs.LOG_FILE, "ab") as job_log:
            child = subprocess.Popen(
                [sys.executable, "-m", "imgclf.loop.scan", str(run_dir)],
                env=environment,
                stdout=job_log,
                stderr=subprocess.STDOUT,
            )
            while child.poll() is None:
                if watcher.cancelled.wait(jobs.CANCEL_POLL_S):
                    child.kill()
                    child.wait()
    finally:
        watcher.stop.set()
        watcher.join(timeout=jobs.HEARTBEAT_S + 1)
    result = runs.read_summary(run_dir)
    tail = (run_dir / runs.LOG_FILE).read_text(errors="replace").splitlines()[-jobs.LOG_LINES :]
    error = None
    if watcher.cancelled.is_set():
        state, error = JobState.CANCELLED, "cancelled by request"
    elif child.returncode == 0 and "error" not in result:
        state = JobState.DONE
    else:
        state = JobState.FAILED
        error = result.get("error") or f"the scan exited with {child.returncode}: {tail[-1:]}"
    jobs.finish(store, job["id"], state, result, error, log_tail="\n".join(tail) + "\n")
    return state


def main(run_dir: str) -> int:
    """The child: load the served model, scan, write ``summary.json`` (``error`` when it
    cannot: no model, or one without features)."""
    from imgclf.model import registry
    from imgclf.model.prediction import Predictor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    try:
        predictor = Predictor.load(settings.models_dir)
    except registry.RegistryError as error:
        runs.write_summary(run_dir, error=f"no model to audit with: {error}")
        return 1
    log.info("scanning %s with model %s", settings.data_dir, predictor.version)
    found = scan(predictor, settings.data_dir)
    log.info("scan done: %s", found)
    runs.write_summary(run_dir, **found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
