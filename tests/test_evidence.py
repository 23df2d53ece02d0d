"""The gate's statistics: exact McNemar p-values, the paired bootstrap, the step-down
correction, and how often the gate itself errs on simulated pairs of models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from devkit.bench_gate import simulate
from imgclf.loop import evidence, gate
from imgclf.model import evaluation


def test_mcnemar_is_the_exact_binomial_test_on_the_disagreements():
    current = np.array([True] * 12 + [False] * 3 + [True] * 20)
    candidate = np.array([False] * 12 + [True] * 3 + [True] * 20)
    b, w, p = evidence.mcnemar_worse(candidate, current)
    assert (b, w) == (12, 3)
    assert p == pytest.approx(stats.binomtest(12, 15, 0.5, alternative="greater").pvalue)
    assert evidence.mcnemar_worse(current, current) == (0, 0, 1.0)


def test_step_down_is_holm_and_leaves_out_comparisons_that_can_never_be_significant():
    p = {"a": 0.01, "b": 0.02, "c": 0.04, "d": 0.9}
    everything_testable = dict.fromkeys(p, 1e-9)
    rejected, levels = evidence.step_down(p, everything_testable, 0.05)
    assert rejected == {"a"} and levels["a"] == 0.05 / 4 and levels["b"] == 0.05 / 3
    # 'd' had one disagreement (smallest p 0.5): it cannot reach 0.05 / k, so it costs nothing
    rejected, levels = evidence.step_down(p, {**everything_testable, "d": 0.5}, 0.05)
    assert rejected == {"a", "b", "c"} and levels["a"] == 0.05 / 3


def test_bootstrap_point_estimates_are_scikit_learns_and_seeded():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(5), 40)
    candidate = np.where(rng.random(200) < 0.8, labels, rng.integers(0, 5, 200))
    current = np.where(rng.random(200) < 0.9, labels, rng.integers(0, 5, 200))
    paired = evidence.Paired(labels, candidate, current, list("abcde"))
    boot = evidence.bootstrap(paired, "f1_macro", resamples=500)
    assert boot.candidate == pytest.approx(skm.f1_score(labels, candidate, average="macro"))
    assert boot.current == pytest.approx(skm.f1_score(labels, current, average="macro"))
    low, high = boot.interval(boot.difference)
    assert low < boot.candidate - boot.current < high
    again = evidence.bootstrap(paired, "f1_macro", resamples=500)
    assert np.array_equal(boot.difference, again.difference)
    for metric in ("accuracy", "precision_macro", "recall_macro"):
        scored = evaluation.classification_metrics(labels, np.eye(5)[candidate], list("abcde"))
        assert evidence.bootstrap(paired, metric, 10).candidate == pytest.approx(scored[metric])


def test_power_and_planning_agree_with_a_simulation():
    # 40 images, recall 0.9 halved: the exact figure against 2,000 simulated classes
    rng = np.random.default_rng(0)
    level, n = 0.05 / 11, 40
    current = rng.random((2000, n)) < 0.9
    candidate = rng.random((2000, n)) < 0.45
    caught = 0
    for cur, cand in zip(current, candidate, strict=True):
        b, w, p = evidence.mcnemar_worse(cand, cur)
        caught += p <= level and (b - w) / n > 0.05
    assert evidence.power(n, 0.9, 0.45, level, 0.05) == pytest.approx(caught / 2000, abs=0.02)
    drop = evidence.detectable_drop(n, 0.9, level, 0.05)
    assert evidence.power(n, 0.9, drop, level, 0.05) >= 0.8
    assert evidence.power(n, 0.9, drop - 0.01, level, 0.05) < 0.8
    needed = evidence.images_needed(0.9, 0.2, level, 0.05)
    assert evidence.power(needed, 0.9, 0.2, level, 0.05) >= 0.8
    assert evidence.images_needed(0.9, 0.04, level, 0.05) is None  # within the margin


def test_the_randomisation_test_holds_its_level_on_small_test_sets():
    # 400 pairs of equally good models on 3 classes of 10 images (independent errors): a
    # bootstrap p-value rejected about 8 % of them at 0.05 here; the randomisation test is
    # exact. 400 draws at a true 5 % exceed 30 (7.5 %) with probability under 1 %.
    rng = np.random.default_rng(11)
    rejected = sum(
        evidence.permutation_worse(simulate(rng, 3, 10, 0.8)[2], "f1_macro", 400) <= 0.05
        for _ in range(400)
    )
    assert rejected <= 30, rejected
    same = simulate(rng, 3, 10, 0.8)[2]
    identical = evidence.Paired(same.labels, same.current, same.current, same.class_names)
    assert evidence.permutation_worse(identical, "f1_macro") == 1.0


def test_the_gate_promotes_equal_candidates_and_blocks_a_halved_class():
    # 200 pairs of equally good models (10 classes of 36 images, 10 % errors, independent):
    # the family-wise level 0.05 lets at most about 5 % be rejected. A bound of 10 % leaves
    # room for chance (the count of false rejections is at most Binomial(200, 0.05), which
    # exceeds 20 with probability under 0.2 %); the old rule rejected about 89 % of them.
    rng = np.random.default_rng(7)
    rejected = sum(
        not gate.gate(*simulate(rng, 10, 36, 0.9), resamples=300, plan=False).promote
        for _ in range(200)
    )
    assert rejected <= 20, rejected
    halved = sum(
        not gate.gate(*simulate(rng, 10, 40, 0.9, 0.45), resamples=300, plan=False).promote
        for _ in range(60)
    )
    assert halved >= 54, halved  # power 0.95 computed exactly; 54 of 60 leaves room for chance
