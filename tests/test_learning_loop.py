"""The learning loop's decisions, without a server: the gate's per-class checks, the split of
uploaded images into a training and a test share, and the loop's settings."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
from conftest import TEST_SEED, png
from PIL import Image

from imgclf import config, figures
from imgclf.data import folders, manifest, uploads
from imgclf.loop import evidence, gate
from imgclf.loop.gate import GateThresholds as T
from imgclf.model import evaluation, network, training


def answers(classes: dict[str, tuple[int, int, int, int]], unseen=()) -> tuple:
    """Both models' answers built from counts, and their metrics, for the gate.

    ``classes``: name -> (both right, only the current model right, only the candidate right,
    both wrong); a wrong answer names the next class. Returns ``(candidate_metrics,
    current_metrics, paired)`` as ``promotion.register_and_decide`` builds them.
    """
    names = list(classes)
    labels, candidate, current = [], [], []
    for index, (both, only_current, only_candidate, neither) in enumerate(classes.values()):
        wrong = (index + 1) % len(names)
        for cand, cur, count in (
            (index, index, both),
            (wrong, index, only_current),
            (index, wrong, only_candidate),
            (wrong, wrong, neither),
        ):
            labels += [index] * count
            candidate += [cand] * count
            current += [cur] * count
    paired = evidence.Paired(labels, candidate, current, names)

    def scored(answer) -> dict:
        return evaluation.classification_metrics(paired.labels, np.eye(len(names))[answer], names)

    current_metrics = scored(paired.current)
    if unseen:
        current_metrics["unseen_classes"] = list(unseen)
    return scored(paired.candidate), current_metrics, paired


def test_a_class_without_test_images_blocks_promotion_and_says_how_to_unblock_it():
    candidate, current, paired = answers(
        {"a": (30, 0, 0, 0), "b": (30, 0, 0, 0), "new": (0, 0, 0, 0)}, unseen=["new"]
    )
    decision = gate.gate(candidate, current, paired, T(min_test_images=5))
    assert not decision.promote and decision.verdict == "blocked"
    assert decision.needs == {"new": 5}
    assert "'new' needs 5 more" in decision.reason and "the current model stays" in decision.reason
    assert "DELETE /uploads/classes/new" in decision.blocked["new"]
    assert list(decision.blocked) == ["new"]
    # enough test images of the new class, recognised: it passes
    candidate, current, paired = answers(
        {"a": (30, 0, 0, 0), "b": (30, 0, 0, 0), "new": (0, 0, 6, 0)}, unseen=["new"]
    )
    assert gate.gate(candidate, current, paired, T(min_test_images=5)).promote
    # with no current model the coverage check still applies
    first = gate.gate({**candidate, "per_class": {"new": {"support": 2}}}, None)
    assert not first.promote and first.needs == {"new": 3} and first.verdict == "blocked"
    assert gate.gate(candidate, None).verdict == "first"


def test_a_class_shown_worse_blocks_and_the_reason_names_it():
    # 'c' falls from 36/36 to 18/36: 18 images only the current model gets right, none the
    # other way; p = 0.5 ** 18, far below 0.05 / 4 (three classes and the overall metric)
    candidate, current, paired = answers(
        {"a": (36, 0, 0, 0), "b": (30, 0, 6, 0), "c": (18, 18, 0, 0)}
    )
    assert candidate["f1_macro"] < current["f1_macro"]
    decision = gate.gate(candidate, current, paired)
    assert not decision.promote and decision.verdict == "worse"
    assert (
        list(decision.blocked) == ["c"] and "recall 0.5000 against 1.0000" in decision.blocked["c"]
    )
    assert "'c': recall 0.5000 against 1.0000" in decision.reason
    row = {r["class"]: r for r in decision.comparisons}["c"]
    assert row["verdict"] == "worse" and row["only_current_right"] == 18
    assert row["p_value"] == pytest.approx(0.5**18) and row["ci_high"] < 0
    table = figures.per_class_table(candidate, decision)
    assert table.loc["c", "blocked"] and not table.loc["a", "blocked"]
    assert table.loc["c", "change"] == pytest.approx(-0.5)
    assert table.loc["b", "current recall"] == pytest.approx(30 / 36)
    assert table.loc["b", "test images"] == 36 and table.loc["b", "verdict"] == "not-worse"
    # the same drops within wider margins do not block (macro F1 fell by 0.12 too)
    assert gate.gate(candidate, current, paired, T(max_recall_drop=0.5, tolerance=0.15)).promote
    overall = gate.gate(candidate, current, paired, T(max_recall_drop=0.5))
    assert not overall.promote and "f1_macro 0.8222 against 0.9441" in overall.reason


def test_a_drop_of_a_few_images_is_not_enough_evidence_and_says_what_would_settle_it():
    # the case that failed CI on another machine: '1' lost 2 of 36 test images (0.0556, over
    # the 0.05 margin) while the candidate was far better overall. Two discordant images give
    # p = 0.25: as likely as not between equally good models. Not a reason to reject.
    classes = {str(d): (36, 0, 0, 0) for d in range(10)}
    classes["1"] = (34, 2, 0, 0)
    classes["7"] = (20, 0, 16, 0)
    candidate, current, paired = answers(classes)
    decision = gate.gate(candidate, current, paired)
    assert decision.promote and decision.verdict == "not-enough-evidence"
    assert list(decision.inconclusive) == ["1"]
    assert "more test images of '1' would settle a drop this size" in decision.inconclusive["1"]
    row = {r["class"]: r for r in decision.comparisons}["1"]
    assert row["verdict"] == "not-enough-evidence" and row["p_value"] == pytest.approx(0.25)
    assert row["more_images"] > 36 and 0 < row["detectable_drop"] < 1
    assert "not enough evidence to tell for '1'" in decision.reason
    assert "caught 80 % of the time" in gate.min_detectable(decision)


def test_one_test_image_in_360_is_no_evidence_against_an_equally_good_candidate():
    # five retrains on unchanged data were rejected for "f1_macro 0.9972 is worse than 1.0000"
    classes = {str(d): (36, 0, 0, 0) for d in range(10)}
    classes["4"] = (35, 1, 0, 0)
    candidate, current, paired = answers(classes)
    decision = gate.gate(candidate, current, paired)
    assert decision.promote, decision.reason
    assert decision.overall["verdict"] == "not-enough-evidence"
    assert decision.overall["ci_low"] < 0 <= decision.overall["ci_high"]
    assert decision.overall["p_value"] > decision.overall["level"]
    # identical answers: nothing to tell apart
    same = gate.gate(
        current,
        current,
        evidence.Paired(paired.labels, paired.current, paired.current, paired.class_names),
    )
    assert same.promote and same.verdict == "not-worse"


def test_a_small_class_lost_entirely_is_blocked_though_no_paired_test_could_show_it():
    # 5 of 5 right, then none: p = 0.5 ** 5 = 0.031, above any corrected level; a class this
    # small is held to the floor every class needs instead (it fell from 1.0 to 0)
    candidate, current, paired = answers(
        {"a": (36, 0, 0, 0), "b": (36, 0, 0, 0), "small": (0, 5, 0, 0)}
    )
    decision = gate.gate(
        candidate, current, paired, T(min_test_images=5, min_new_class_recall=0.5)
    )
    assert not decision.promote and list(decision.blocked) == ["small"]
    assert "too few for a paired test" in decision.blocked["small"]
    row = {r["class"]: r for r in decision.comparisons}["small"]
    assert row["too_small_to_test"] and row["ci_low"] < row["ci_high"] < 0  # not a point
    # a small class that keeps its recall is not held back
    candidate, current, paired = answers(
        {"a": (36, 0, 0, 0), "b": (36, 0, 0, 0), "small": (4, 1, 0, 0)}
    )
    assert gate.gate(
        candidate, current, paired, T(min_test_images=5, min_new_class_recall=0.5)
    ).promote


def test_answers_and_metrics_of_different_test_sets_are_refused():
    candidate, current, paired = answers({"a": (30, 0, 0, 0), "b": (30, 0, 0, 0)})
    swapped = evidence.Paired(paired.labels, paired.candidate, paired.current, ["b", "a"])
    with pytest.raises(ValueError, match="classes"):
        gate.gate(candidate, current, swapped)
    shorter = evidence.Paired(
        paired.labels[1:], paired.candidate[1:], paired.current[1:], ["a", "b"]
    )
    with pytest.raises(ValueError, match="not of the test set"):
        gate.gate(candidate, current, shorter)
    with pytest.raises(ValueError, match="not a number"):
        gate.gate({**candidate, "f1_macro": float("nan")}, current, paired)


def test_a_new_class_the_candidate_does_not_recognise_blocks_promotion():
    # the current model never saw "new": it scores zero there, so no recall can be "lost"
    candidate, current, paired = answers(
        {"a": (30, 0, 0, 0), "b": (30, 0, 0, 0), "new": (0, 0, 1, 4)}, unseen=["new"]
    )
    checks = {"min_test_images": 5, "min_new_class_recall": 0.5}
    decision = gate.gate(candidate, current, paired, T(**checks))
    assert not decision.promote and list(decision.blocked) == ["new"]
    assert "'new' (0.2000)" in decision.reason and "at least 0.5 recall" in decision.reason
    assert gate.gate(
        candidate, current, paired, T(**{**checks, "min_new_class_recall": 0.2})
    ).promote
    candidate, current, paired = answers(
        {"a": (30, 0, 0, 0), "b": (30, 0, 0, 0), "new": (0, 0, 3, 2)}, unseen=["new"]
    )
    passed = gate.gate(candidate, current, paired, T(**checks))
    assert passed.promote and "new classes recognised" in passed.reason
    assert "new" not in {row["class"] for row in passed.comparisons}


def test_gate_thresholds_refuse_figures_out_of_range():
    with pytest.raises(ValueError, match="min_test_images"):
        T(min_test_images=-1)
    with pytest.raises(ValueError, match="max_recall_drop"):
        T(max_recall_drop=1.5)
    with pytest.raises(ValueError, match="alpha"):
        T(alpha=0.9)
    with pytest.raises(ValueError, match="metric"):
        T(metric="auc")
    with pytest.raises(ValueError, match="paired"):
        gate.gate({"f1_macro": 1}, {"f1_macro": 1})


def test_assign_splits_gives_a_new_class_its_test_images_and_depends_only_on_content():
    fresh = {hashlib.sha256(png(seed)).hexdigest(): "probe" for seed in range(13)}
    chosen = uploads.assign_splits(fresh, {}, test_share=0.2, min_test=5)
    assert list(chosen.values()).count("test") >= 5
    assert list(chosen.values()).count("train") >= 6
    assert chosen[min(fresh)] == "train"  # a class's first image trains
    # the same images, given in another order, land in the same shares
    again = uploads.assign_splits(dict(reversed(list(fresh.items()))), {}, 0.2, 5)
    assert again == chosen
    # a class that already has test images only gets the hash share
    known = {"probe": {"train": 100, "test": 40}}
    shares = uploads.assign_splits(fresh, known, test_share=0.2, min_test=5)
    expected = {d: "test" if uploads.hash_fraction(d) < 0.2 else "train" for d in fresh}
    assert shares == expected


def test_uploaded_test_share_joins_the_test_set_and_never_moves(digits_dir, tmp_path):
    for split in ("train", "test"):
        for index, path in enumerate(sorted((digits_dir / split / "0").iterdir())[:6]):
            target = tmp_path / split / str(index % 2) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    index = uploads.HashIndex(tmp_path)
    files = [("probe", f"p{seed}.png", png(seed)) for seed in range(13)]
    report = uploads.store_upload(files, tmp_path / "uploads", index, test_share=0.2, min_test=5)
    by_split = {row["stored_as"]: row["split"] for row in report.accepted}
    assert sorted(set(by_split.values())) == ["test", "train"]
    rows = manifest.read(tmp_path / "uploads" / report.batch)
    assert {row["stored_as"]: row["split"] for row in rows} == by_split
    test_share = folders.discover_uploads(tmp_path / "uploads", "test")
    assert len(test_share.paths) == list(by_split.values()).count("test") >= 5
    dataset = training.load_dataset(tmp_path, 8, "grayscale", include_uploads=True)
    assert dataset.class_names == ["0", "1", "probe"]
    assert dataset.test.class_names == dataset.class_names
    assert dataset.uploaded_tests == len(test_share.paths)
    assert np.bincount(dataset.test.labels)[2] == len(test_share.paths)
    assert np.bincount(dataset.train.labels)[2] == list(by_split.values()).count("train")
    # more uploads of the class later: the earlier images keep their shares
    more = [("probe", f"q{seed}.png", png(seed)) for seed in range(13, 40)]
    uploads.store_upload(more, tmp_path / "uploads", index, test_share=0.2, min_test=5)
    first = manifest.splits(tmp_path / "uploads" / report.batch)
    assert {f"uploads/{report.batch}/{name}": s for name, s in first.items()} == by_split
    counts = uploads.class_counts(tmp_path)
    assert counts["uploads"]["probe"] == 40
    assert counts["uploads_test"]["probe"] + counts["uploads_train"]["probe"] == 40


def test_a_batch_without_splits_in_its_manifest_is_training_data(tmp_path):
    folder = tmp_path / "uploads" / "20250101-000000-abcdef" / "cat"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(png(1))
    assert folders.discover_uploads(tmp_path / "uploads", "train").counts() == {"cat": 1}
    assert folders.discover_uploads(tmp_path / "uploads", "test") is None


@pytest.mark.parametrize(
    "name, value",
    [
        ("UPLOAD_TEST_SHARE", "0.95"),
        ("GATE_MAX_RECALL_DROP", "2"),
        ("GATE_MIN_NEW_CLASS_RECALL", "1.5"),
        ("AUTO_RETRAIN", "yes"),
        ("AUTO_RETRAIN_MIN_IMAGES", "0"),
        ("DRIFT_MIN_SAMPLE", "1"),
        ("RETAIN_IMAGES", "-5"),
    ],
)
def test_a_loop_setting_out_of_range_is_refused_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError, match=name):
        config.get_loop_settings()


def test_kept_images_are_pruned_by_age_then_oldest_first_beyond_the_count(tmp_path):
    from imgclf.loop.retention import ImageGone, ImageKeeper

    keeper = ImageKeeper(tmp_path / "retained", max_images=3, max_age_s=3600)
    now = 1_000_000.0
    digests = []
    for age, seed in zip((7200, 50, 40, 30, 20), range(5), strict=True):
        payload = png(seed)
        digest = hashlib.sha256(payload).hexdigest()
        path = keeper.write(digest, payload)
        os.utime(path, (now - age, now - age))
        digests.append(digest)
    assert keeper.prune(now) == 2  # one too old, then the oldest beyond three
    assert [keeper.has(d) for d in digests] == [False, False, True, True, True]
    assert keeper.read(digests[4]) == png(4)
    with pytest.raises(ImageGone, match="no longer kept"):
        keeper.read(digests[0])
    off = ImageKeeper(tmp_path / "off", max_images=0, max_age_s=3600)
    off.keep(digests[4], png(4))
    with pytest.raises(ImageGone, match="not kept"):
        off.read(digests[4])


def test_a_failed_job_says_when_it_ran_out_of_memory_or_its_kernel_died():
    from imgclf import pipeline
    from imgclf.loop import kernels

    oom = pipeline.PipelineError("04_retrain.ipynb failed: MemoryError: Unable to allocate 9 GiB")
    assert kernels.explain(oom).startswith("out of memory:")
    xla = pipeline.PipelineError("failed: XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory")
    assert kernels.explain(xla).startswith("out of memory:")
    died = kernels.KernelDied("Kernel died")
    assert "kernel died while running" in kernels.explain(died, 0, 0)
    assert "OOM kill" in kernels.explain(died, 0, 1)
    assert kernels.explain(pipeline.PipelineError("ValueError: bad")) == "ValueError: bad"


def test_a_rare_class_is_repeated_up_to_the_floor_and_a_balanced_one_is_not():
    labels = np.array([0] * 100 + [1] * 90 + [2] * 110 + [3] * 7)
    indices = np.arange(len(labels))
    balanced = indices[labels != 3]
    assert training.oversample_rare(labels, balanced, 0.5, seed=1)[0] is balanced

    repeated, plan = training.oversample_rare(labels, indices, 0.5, seed=1)
    assert plan == {3: (7, 47)}  # half the median (95, of 90, 100, 110 and 7), floored
    counts = np.bincount(labels[repeated])
    assert counts.tolist() == [100, 90, 110, 47]
    assert set(repeated[labels[repeated] == 3]) == set(indices[labels == 3])
    assert np.array_equal(repeated, training.oversample_rare(labels, indices, 0.5, seed=1)[0])
    assert not np.array_equal(repeated, training.oversample_rare(labels, indices, 0.5, seed=2)[0])
    assert training.oversample_rare(labels, indices, 0.0, seed=1)[0] is indices


def test_validation_images_are_never_repeated():
    labels = np.array([0] * 200 + [1] * 200 + [2] * 20)
    params = network.TrainParams(validation_fraction=0.1, balance=1.0)
    train, validation, plan = training.training_indices(labels, params, seed=3)
    assert plan and set(plan) == {2}
    # a tenth of 420 is 42: raised to the floor of 60 held-out images (calibration needs them)
    assert len(np.unique(validation)) == len(validation) == training.MIN_VALIDATION_IMAGES
    assert not set(train) & set(validation)
    assert np.bincount(labels[train]).tolist() == [171, 172, 171]  # the rare class repeated


def cross_image(i: int) -> Image.Image:
    """An 8x8 cross at a position of its own: a new class, unlike any digit."""
    pixels = np.zeros((8, 8), np.uint8)
    pixels[:, i % 8], pixels[i % 8, :] = 255, 200 + i
    return Image.fromarray(pixels)


@pytest.mark.slow
@pytest.mark.training
def test_a_new_class_of_a_few_images_is_learned_and_passes_the_default_gate(
    trained_root, tmp_path
):
    """8 training images of a new class beside about 140 of each digit, fine-tuned 3 epochs.

    Margins: the crosses are unlike any digit, and repeated up to half the median class they
    are learned (5 of 5 test images with seeds 1, 2 and 3); at least 4 of 5 are asked. The
    gate's checks of the digits are paired tests (a few images more or less wrong is not
    evidence), so a fine-tune that keeps the digits is promoted on any CPU.
    """
    from imgclf.data import augment
    from imgclf.model import registry

    shutil.copytree(trained_root / "data", tmp_path / "data")
    for split, numbers in (("train", range(8)), ("test", range(8, 13))):
        (tmp_path / "data" / split / "cross").mkdir()
        for i in numbers:  # beside about 140 images of each digit
            cross_image(i).save(tmp_path / "data" / split / "cross" / f"{i}.png")
    models = trained_root / "models"
    info = registry.metadata(models, registry.current_version(models))
    dataset = training.load_dataset(
        tmp_path / "data", 16, "grayscale", base_classes=info["class_names"]
    )
    current = network.load_model(registry.model_path(models, info["version"]))
    current_metrics, current_probabilities = training.evaluate(current, dataset.test)

    network.set_seed(TEST_SEED)
    candidate = network.load_model(registry.model_path(models, info["version"]))
    candidate = network.widen_head(candidate, info["class_names"], dataset.class_names)
    network.compile_model(candidate, 3e-4)
    params = network.TrainParams(epochs=3, patience=3, learning_rate=3e-4, balance=0.5)
    augmentation = augment.Augmentation(0.05, 0.1, 0.1, False, seed=TEST_SEED)
    training.fit(candidate, dataset, params, augmentation, seed=TEST_SEED, verbose=0)
    metrics, probabilities = training.evaluate(candidate, dataset.test)

    assert current_metrics["unseen_classes"] == ["cross"]
    assert metrics["per_class"]["cross"]["recall"] >= 0.8, metrics["per_class"]["cross"]
    paired = evidence.Paired(
        dataset.test.labels,
        probabilities.argmax(axis=1),
        current_probabilities.argmax(axis=1),
        dataset.class_names,
    )
    defaults = {"min_test_images": 5, "max_recall_drop": 0.05, "min_new_class_recall": 0.5}
    decision = gate.gate(metrics, current_metrics, paired, T(**defaults))
    assert decision.promote, decision.reason
    # the same candidate had it never answered 'cross' (as one trained without repeating the
    # class did: recall 0, yet a little better on the digits): the new-class check refuses it
    cross = dataset.class_names.index("cross")
    blind = np.where(paired.candidate == cross, paired.current, paired.candidate)
    blind[(paired.labels == cross) & (blind == cross)] = 0
    blind_metrics = evaluation.classification_metrics(
        paired.labels, np.eye(len(dataset.class_names))[blind], dataset.class_names
    )
    blind_pair = evidence.Paired(paired.labels, blind, paired.current, paired.class_names)
    refused = gate.gate(blind_metrics, current_metrics, blind_pair, T(**defaults))
    assert not refused.promote and list(refused.blocked) == ["cross"], refused.reason


def test_the_upload_manifest_has_one_owner():
    """Only ``imgclf/data/manifest.py`` names the manifest's file or parses it: the others
    call it."""
    rows = [manifest.row("a.png", "cat", "ab" * 32, "b1", "ab.png", "test")]
    assert manifest.class_and_name(rows[0]) == ("cat", "ab.png")
    with pytest.raises(ValueError, match="split"):
        manifest.row("a.png", "cat", "ab" * 32, "b1", "ab.png", "validation")
    source = config.PROJECT_ROOT / "src"
    for path in source.rglob("*.py"):
        if path.name != "manifest.py":
            text = path.read_text()
            assert '"manifest.json"' not in text, f"{path} names the manifest's file itself"
            assert "MANIFEST" not in text, f"{path} keeps its own name for the manifest"


def test_a_job_process_that_fails_before_it_runs_says_why_through_its_pipe():
    """The job's process answers through a pipe; one that cannot even read its job still
    answers, so the job's error names the cause instead of only an exit status."""
    import pickle
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    child = subprocess.run(
        [sys.executable, "-m", "imgclf.loop.kernels", str(write_end), str(os.getpid())],
        input=b"not a pickled job",
        pass_fds=(write_end,),
        capture_output=True,
        check=False,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        what, said = pickle.loads(answer.read())
    assert child.returncode != 0 and what == "error"
    assert said.startswith("the job's process failed: UnpicklingError"), said
