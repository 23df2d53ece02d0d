"""``make bench-retrain``: what a retrain's decision costs, and what a job leaves in the worker.

1. The gate's decision, the old way against the new, on EfficientNet-Lite0 (ImageNet, frozen,
   the head a logistic regression as ``training.fit`` fits it; ``BENCH_RETRAIN_SIZE`` px, 32)
   with ``BENCH_RETRAIN_TEST`` (10,000) Fashion-MNIST test images. Two models are trained on
   ``BENCH_RETRAIN_TRAIN`` (100) training images a class (seeds 1 and 2): one registered as the
   current model, the other the candidate. The old way is the call sequence before
   ``promotion.score`` (commit 441f081): the candidate evaluated by Keras, the current model
   loaded and evaluated by Keras, then both run again for the trust checks. The new way is
   ``register_and_decide``'s (``promotion.decide``): the candidate's one pass (``score``),
   whose probabilities and features feed the metrics, the paired answers and the trust
   checks, and the current model's answers kept when it was registered (``loop.answers``; the
   current model is registered here as a registration does, after its pass over the test
   set), read instead of running it; the candidate's answers to keep are made in the timed
   part. Both stop at the registration (the same for both). Each is timed in a fresh
   process (a retrain's kernel is one: compilations count), ``BENCH_RETRAIN_ROUNDS`` (2)
   rounds, the order alternating.
2. The idle worker's memory: a real worker (``imgclf worker``, as ``make worker``) on a
   temporary project (SQLite) with the current model, its RSS (``VmRSS``) read while idle,
   then after ``BENCH_RETRAIN_JOBS`` (1) retrain job(s) on the training images and 100 test
   images a class, once it is idle again.

Writes ``reports/bench-retrain-<time>.json`` and the table in docs/benchmarks.md (between the
``bench-retrain`` markers). ``BENCH_RETRAIN_PARTS`` (``gate,worker``) runs one part only.
About 17 minutes on 2 shared cores (``BENCH_RETRAIN_TEST=2000`` for a quicker look).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from devkit.bench_train import publish
from imgclf.config import PROJECT_ROOT, Settings

MARKERS = ("<!-- bench-retrain -->", "<!-- /bench-retrain -->")
BACKBONE = "efficientnet_lite0"
IMAGE_SIZE = 28
#: Test images a class the worker's retrain job is gated on (and the models are fitted with).
JOB_TEST_PER_CLASS = 100
#: Seconds a worker is left idle before its memory is read (past its pointer check).
IDLE_S = 15.0


def _knob(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _link(source: Path, target: Path, per_class: dict[str, int | None]) -> Path:
    """``target`` with the first ``per_class[split]`` images of each class of ``source``
    (hard links); the whole split where that is None."""
    for split, count in per_class.items():
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (target / split / folder.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(folder.iterdir())[:count]:
                os.link(image, target / split / folder.name / image.name)
    return target


def prepare_data(folder: Path, train_per_class: int, test_images: int) -> tuple[Path, Path]:
    """Fashion-MNIST as class folders (Debian's package, offline): ``full`` (the training
    sample and ``test_images`` test images) and ``small`` (the same training sample and
    ``JOB_TEST_PER_CLASS`` test images a class)."""
    from imgclf.data import folders

    raw = folder / "raw"  # the first images of each split: enough of each class
    limit = max(test_images, 20 * train_per_class, 20 * JOB_TEST_PER_CLASS)
    folders.prepare_public_dataset("fashion_mnist", raw, limit=limit)
    full = _link(raw, folder / "full", {"train": train_per_class, "test": test_images // 10})
    small = _link(raw, folder / "small", {"train": train_per_class, "test": JOB_TEST_PER_CLASS})
    return full, small


def train(dataset, seed: int, size: int):
    """Lite0 as the train notebook builds it with a backbone (tap ``top``, head only),
    calibrated; returns ``(model, test metrics, training record)``."""
    from imgclf.loop import promotion
    from imgclf.model import network, posthoc, training

    network.set_seed(seed)
    params = network.TrainParams(fine_tune_epochs=0)
    model = network.build_model(
        len(dataset.class_names),
        dataset.input_shape,
        params.l2,
        params.dropout,
        backbone=BACKBONE,
        backbone_weights="imagenet",
        backbone_size=size,
    )
    network.compile_model(model, params.learning_rate)
    history = training.fit(model, dataset, params, None, seed, verbose=0)
    scored = promotion.score(model, dataset.test)
    trusted = posthoc.fit(model, dataset, params, seed, scored.probabilities)
    parameters = training.params_dict(
        params,
        backbone=BACKBONE,
        backbone_weights="imagenet",
        backbone_size=size,
        backbone_tap="top",
        flip=False,
        seed=seed,
    )
    record = training.TrainingRecord(parameters, history, "grayscale", trust=trusted)
    return model, scored.metrics, record


def project_settings(folder: Path, data_dir: Path) -> Settings:
    """A temporary project: ``data_dir``, its own models, reports, cache and SQLite."""
    from imgclf.store import migrations

    url = f"sqlite:///{folder / 'imgclf.db'}"
    for name in ("models", "reports"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    migrations.upgrade(url)
    return Settings(
        project_root=folder,
        data_dir=data_dir,
        models_dir=folder / "models",
        reports_dir=folder / "reports",
        notebooks_dir=PROJECT_ROOT / "notebooks",
        database_url=url,
        image_size=IMAGE_SIZE,
        color_mode="grayscale",
        seed=1,
        cache_dir=folder / "cache",
    )


def setup(folder: Path, size: int, train_per_class: int, test_images: int) -> Settings:
    """Data, the current model (registered, promoted, with its answers on the full test set
    kept as a registration keeps them) and the candidate (in its own registry, ``candidate/``);
    the decoded cache filled for both data sets. Returns the project."""
    from imgclf.loop import answers, promotion
    from imgclf.model import registry, training

    full, small = prepare_data(folder / "data", train_per_class, test_images)
    project = project_settings(folder / "project", small)
    dataset = training.load_dataset(small, IMAGE_SIZE, "grayscale", cache_dir=folder / "cache")
    full_set = training.load_dataset(full, IMAGE_SIZE, "grayscale", cache_dir=folder / "cache")
    for seed, models_dir in ((1, project.models_dir), (2, folder / "candidate")):
        began = time.perf_counter()
        model, metrics, record = train(dataset, seed, size)
        kept = None
        if seed == 1:  # the current model, registered after its pass over the test set
            scored = promotion.score(model, full_set.test)
            own = promotion.own_answers(scored, model, full_set, record)
            kept = {answers.FILE: own.to_bytes()}
        version = training.register(models_dir, model, dataset, metrics, record, attachments=kept)
        registry.promote(models_dir, version)
        print(
            f"seed {seed}: accuracy {metrics['accuracy']:.4f} on {len(dataset.test.labels)} "
            f"test images, {time.perf_counter() - began:.0f} s",
            flush=True,
        )
    return project


def old_trust(models_dir: Path, current: str, model, dataset, record) -> tuple | None:
    """The trust checks as they were before 441f081 (``promotion.trust_answers``): both models
    run over the test images again (and the unlike ones)."""
    import numpy as np

    from imgclf.loop import trustcheck
    from imgclf.model import ood, registry
    from imgclf.model.batches import as_inputs
    from imgclf.model.prediction import Predictor

    known = registry.metadata(models_dir, current)
    if record.trust is None or "calibration" not in known:
        return None
    keep = np.asarray(dataset.test.labels) < len(known["class_names"])
    images = as_inputs(np.asarray(dataset.test.images)[keep])
    labels = np.asarray(dataset.test.labels)[keep]
    found = ood.sets(
        images,
        tuple(known["image_size"]),
        known["color_mode"],
        known["class_names"],
        other_data=False,
    )
    unlike = np.concatenate([found[name] for name in sorted(found)]).astype(np.float32)
    candidate = Predictor("candidate", {"calibration": record.trust.calibration}, model)
    candidate.novelty = record.trust.novelty
    return tuple(
        trustcheck.answers(predictor, images, labels, unlike)
        for predictor in (candidate, Predictor.load(models_dir, current, runtime="jax"))
    )


def old_way(models_dir: Path, model, dataset, record, thresholds):
    """The decision before 441f081: the notebook's Keras evaluation of the candidate, the
    current model loaded and evaluated by Keras, then the trust checks' own passes."""
    from imgclf.loop import evidence, promotion
    from imgclf.model import network, registry, training

    candidate_metrics, probabilities = training.evaluate(model, dataset.test)
    current = registry.current_version(models_dir)
    current_model = network.load_model(registry.model_path(models_dir, current))
    current_metrics, current_probabilities = training.evaluate(current_model, dataset.test)
    paired = evidence.Paired(
        dataset.test.labels,
        probabilities.argmax(axis=1),
        current_probabilities.argmax(axis=1),
        dataset.class_names,
        training.test_fingerprint(dataset),
    )
    trust = old_trust(models_dir, current, model, dataset, record)
    return promotion._decide(
        candidate_metrics, current, current_metrics, paired, "if-not-worse", thresholds, trust
    )


def new_way(models_dir: Path, model, dataset, record, thresholds):
    """The decision now: ``register_and_decide`` up to the registration (``promotion.decide``:
    the current model's kept answers read, not run; the candidate's answers made to keep),
    after the notebook's ``promotion.score`` of the candidate."""
    from imgclf.loop import promotion

    candidate = promotion.score(model, dataset.test)
    gated = promotion.decide(models_dir, model, dataset, candidate, record, thresholds)
    return gated.decision


def time_decision(way: str, folder: Path) -> dict:
    """In this (fresh) process: load the candidate, then time one way to the decision."""
    from imgclf.loop import gate
    from imgclf.model import network, novelty, registry, training

    dataset = training.load_dataset(
        folder / "data" / "full", IMAGE_SIZE, "grayscale", cache_dir=folder / "cache"
    )
    candidates = folder / "candidate"
    version = registry.current_version(candidates)
    model = network.load_model(registry.model_path(candidates, version))
    detector = novelty.Novelty.from_bytes(registry.attachment(candidates, version, novelty.FILE))
    calibration = registry.metadata(candidates, version)["calibration"]
    trust = SimpleNamespace(calibration=calibration, novelty=detector)
    record = SimpleNamespace(trust=trust, color_mode="grayscale")
    decide = old_way if way == "old" else new_way
    began = time.perf_counter()
    decision = decide(folder / "project" / "models", model, dataset, record, gate.GateThresholds())
    seconds = time.perf_counter() - began
    return {
        "way": way,
        "seconds": round(seconds, 2),
        "test_images": len(dataset.test.labels),
        "promote": bool(decision.promote),
        "verdict": decision.verdict,
        "trust_rows": len(decision.trust),  # the trust checks ran
    }


def time_gate(folder: Path, rounds: int) -> list[dict]:
    """``rounds`` rounds of old and new, each in its own process, the order alternating."""
    results = []
    for number in range(rounds):
        order = ("old", "new") if number % 2 == 0 else ("new", "old")
        row = {"round": number + 1}
        for way in order:
            done = subprocess.run(
                [sys.executable, "-m", "devkit.bench_retrain", "time", way, str(folder)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"timing {way} failed:\n{done.stderr[-3000:]}")
            row[way] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {number + 1}, {way}: {row[way]}", flush=True)
        row["ratio"] = round(row["old"]["seconds"] / row["new"]["seconds"], 2)
        results.append(row)
    return results


def rss_mb(pid: int) -> float:
    """A process's resident memory (``VmRSS``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def idle_rss(pid: int, wait_s: float = IDLE_S, samples: int = 5) -> float:
    """The median RSS of an idle process over ``samples`` seconds, after ``wait_s``."""
    time.sleep(wait_s)
    taken = []
    for _ in range(samples):
        taken.append(rss_mb(pid))
        time.sleep(1.0)
    return round(statistics.median(taken), 1)


def _jax_loaded(pid: int) -> bool:
    """Whether a process has JAX's (so Keras') native library mapped."""
    return "jaxlib" in Path(f"/proc/{pid}/maps").read_text()


def _wait(test, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := test():
            return found
        time.sleep(1.0)
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")


def worker_memory(project: Settings, jobs_count: int) -> dict:
    """A worker's idle RSS before and after ``jobs_count`` retrain jobs (one at a time)."""
    from imgclf.loop import jobs
    from imgclf.store import FINAL_STATES, Store

    log_path = project.project_root / "worker.log"
    env = {**os.environ, **project.as_environment(), "LOG_LEVEL": "INFO"}
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "imgclf.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    store = Store(project.database_url)
    try:
        _wait(lambda: "waiting for jobs" in log_path.read_text(), 120, "the worker to start")
        result = {"before_mb": idle_rss(worker.pid), "jobs": []}
        for _ in range(jobs_count):
            job = jobs.queue_retrain(store, project, {"epochs": 1, "patience": 1})
            began = time.perf_counter()
            done = _wait(
                lambda j=job: (row := store.job(j["id"]))["state"] in FINAL_STATES and row,
                900,
                "the retrain job",
            )
            seconds = round(time.perf_counter() - began, 1)
            after = idle_rss(worker.pid)
            print(f"job {done['state']} in {seconds} s; idle RSS {after} MB", flush=True)
            result["jobs"].append({"state": str(done["state"]), "seconds": seconds, "mb": after})
        result["after_mb"] = result["jobs"][-1]["mb"]
        result["difference_mb"] = round(result["after_mb"] - result["before_mb"], 1)
        result["jax_loaded"] = _jax_loaded(worker.pid)
        return result
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        store.engine.dispose()


def table(gate_rounds: list[dict], memory: dict | None) -> str:
    """The table of docs/benchmarks.md."""
    lines = [
        "| measure | before | after | |",
        "|---|---:|---:|---|",
    ]
    for row in gate_rounds:
        old, new = row["old"]["seconds"], row["new"]["seconds"]
        lines.append(
            f"| the gate's decision, round {row['round']} (fresh process each) | "
            f"{old:.1f} s (old passes) | "
            f"{new:.1f} s (the candidate's pass, the current's kept answers) | "
            f"x{row['ratio']:.2f} faster |"
        )
    if gate_rounds:
        ratio = statistics.median(row["ratio"] for row in gate_rounds)
        lines.append(f"| the gate's decision, median of per-round ratios | | | x{ratio:.2f} |")
    if memory:
        jobs = ", ".join(f"{j['state']} in {j['seconds']:.0f} s" for j in memory["jobs"])
        lines.append(
            f"| the idle worker's RSS, before and after {len(memory['jobs'])} retrain job(s) "
            f"({jobs}) | {memory['before_mb']:.1f} MB | {memory['after_mb']:.1f} MB | "
            f"{memory['difference_mb']:+.1f} MB; JAX loaded: {memory['jax_loaded']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "time":  # a child: one way timed, printed as JSON
        print(json.dumps(time_decision(argv[1], Path(argv[2]))))
        return 0
    size = _knob("BENCH_RETRAIN_SIZE", 32)
    test_images = _knob("BENCH_RETRAIN_TEST", 10000)
    train_per_class = _knob("BENCH_RETRAIN_TRAIN", 100)
    parts = set((os.environ.get("BENCH_RETRAIN_PARTS") or "gate,worker").split(","))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as name:
        folder = Path(name)
        project = setup(folder, size, train_per_class, test_images)
        rounds = time_gate(folder, _knob("BENCH_RETRAIN_ROUNDS", 2)) if "gate" in parts else []
        memory = None
        if "worker" in parts:
            memory = worker_memory(project, _knob("BENCH_RETRAIN_JOBS", 1))
    record = {
        "date": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "backbone_size": size,
        "train_images": train_per_class * 10,
        "test_images": test_images,
        "job_test_images": JOB_TEST_PER_CLASS * 10,
        "total_seconds": round(time.perf_counter() - began, 1),
        "gate": rounds,
        "worker": memory,
    }
    caption = (
        f"`make bench-retrain`: EfficientNet-Lite0 (ImageNet, {size} px, head only) trained on "
        f"{train_per_class * 10:,} Fashion-MNIST images, the gate on {test_images:,} test "
        f"images; the worker's job on {JOB_TEST_PER_CLASS * 10:,}; {record['cpus']} cores, "
        f"{record['total_seconds'] / 60:.1f} minutes in all; {record['date'][:10]}."
    )
    publish("bench-retrain", record, f"{caption}\n\n{table(rounds, memory)}", MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
