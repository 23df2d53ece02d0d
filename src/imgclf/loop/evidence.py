"""Paired statistics for two models scored on the same test images: is the candidate worse?

Both models answer every test image, so the comparison is paired: what matters is where they
disagree. This module gives the promotion gate (``imgclf.loop.gate``) its evidence:

- ``mcnemar_worse``: for one class, an exact one-sided McNemar test. Of the images of the
  class that exactly one model gets right, ``b`` only the current model gets right and ``w``
  only the candidate; if both had the same recall, ``b`` would be Binomial(b + w, 1/2).
- ``bootstrap``: a paired bootstrap, stratified by class (each class keeps its number of
  images), of the overall metric (macro F1, accuracy, ...) and of each class's recall, for
  both models at once; its percentiles give intervals of the differences.
- ``permutation_worse``: a paired randomisation test of the overall metric (each image's two
  answers swapped at random), whose p-value is exact at any size of test set.
- ``step_down``: Holm's step-down correction for testing several classes at once, with
  Tarone's refinement for discrete tests: a class with too few disagreements to ever reach
  significance (``b + w`` small) is not counted among the comparisons. The chance of calling
  at least one comparison "worse" when none is stays under ``alpha``.
- ``power``, ``detectable_drop`` and ``images_needed``: what a test set of a given size can
  show, under the planning assumption that the two models err independently (the worst case
  for a paired test: real retrains share most of their errors, which makes the test stronger).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Default chance of calling an equally good candidate worse (family-wise, over all classes).
ALPHA = 0.05
#: Default number of bootstrap resamples (p-values down to 1/2001).
RESAMPLES = 2000
#: The power planning figures aim for: a drop is "detectable" when caught 80 % of the time.
POWER = 0.8
METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


@dataclass(frozen=True)
class Paired:
    """The per-image answers of a candidate and the current model on one test set.

    ``labels``, ``candidate`` and ``current`` are class indices into ``class_names``, one per
    test image; ``fingerprint`` identifies the test set (files, labels, input format).
    """

    labels: np.ndarray
    candidate: np.ndarray
    current: np.ndarray
    class_names: list[str]
    fingerprint: str = ""

    def __post_init__(self):
        for name in ("labels", "candidate", "current"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        n = len(self.labels)
        if len(self.candidate) != n or len(self.current) != n:
            raise ValueError(
                f"paired predictions of unequal length: {n} labels, "
                f"{len(self.candidate)} candidate and {len(self.current)} current answers"
            )
        k = len(self.class_names)
        for name in ("labels", "candidate", "current"):
            values = getattr(self, name)
            if len(values) and (values.min() < 0 or values.max() >= k):
                raise ValueError(f"{name}: class indices must lie in 0..{k - 1}")

    def support(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))

    def as_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "class_names": list(self.class_names),
            "labels": self.labels.tolist(),
            "candidate": self.candidate.tolist(),
            "current": self.current.tolist(),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Paired:
        return cls(
            values["labels"],
            values["candidate"],
            values["current"],
            list(values["class_names"]),
            values.get("fingerprint", ""),
        )


def mcnemar_worse(
    candidate_right: np.ndarray, current_right: np.ndarray
) -> tuple[int, int, float]:
    """Exact one-sided McNemar test that the candidate is right less often than the current.

    Returns:
        ``(b, w, p)``: images only the current model got right, images only the candidate got
        right, and the p-value P(X >= b) for X ~ Binomial(b + w, 1/2) (1.0 when b + w = 0).
    """
    b = int(np.sum(current_right & ~candidate_right))
    w = int(np.sum(candidate_right & ~current_right))
    p = float(stats.binom.sf(b - 1, b + w, 0.5)) if b + w else 1.0
    return b, w, p


def discordant_counts(paired: Paired) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: images only the current model got right (b), only the candidate (w), and
    the exact one-sided McNemar p-value of each class (as ``mcnemar_worse``)."""
    k = len(paired.class_names)
    right_cand = paired.candidate == paired.labels
    right_cur = paired.current == paired.labels
    b = np.bincount(paired.labels[right_cur & ~right_cand], minlength=k)
    w = np.bincount(paired.labels[right_cand & ~right_cur], minlength=k)
    p = np.where(b + w > 0, stats.binom.sf(b - 1, np.maximum(b + w, 1), 0.5), 1.0)
    return b, w, p


def paired_interval(w: int, b: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a paired difference of proportions, ``(w - b) / n`` (Bonett and Price's
    adjusted Wald interval: one added to each discordant count; good coverage even with a
    handful of images, where a bootstrap collapses to a point)."""
    if n <= 0:
        return -1.0, 1.0
    more, less = (w + 1) / (n + 2), (b + 1) / (n + 2)
    difference = more - less
    spread = np.sqrt(max(more + less - difference**2, 0.0) / (n + 2))
    z = stats.norm.ppf(0.5 + confidence / 2)
    return float(max(difference - z * spread, -1.0)), float(min(difference + z * spread, 1.0))


def smallest_p(discordant: int) -> float:
    """The smallest p-value an exact McNemar test can reach with ``discordant`` disagreements."""
    return 0.5**discordant


def step_down(
    p_values: dict[str, float], p_min: dict[str, float], alpha: float
) -> tuple[set[str], dict[str, float]]:
    """Holm's step-down procedure with Tarone's count of testable hypotheses.

    At each step the smallest remaining p-value is compared with ``alpha / K``, where ``K`` is
    the least number such that at most ``K`` of the remaining hypotheses could reach
    ``alpha / K`` at all (``p_min``). Family-wise error stays at most ``alpha`` (Hommel and
    Krishnamoorthy, 1998); hypotheses that can never be significant cost no power.

    Returns:
        ``(rejected, thresholds)``: the names rejected, and the level each name was (or would
        have been, after the procedure stopped) compared with.
    """
    remaining = sorted(p_values, key=lambda name: (p_values[name], name))
    rejected: set[str] = set()
    thresholds: dict[str, float] = {}
    stopped = False
    while remaining:
        minima = np.sort([p_min[name] for name in remaining])
        ks = np.arange(1, len(minima) + 1)
        testable = np.searchsorted(minima, alpha / ks, side="right")  # reach alpha / k at all
        count = int(ks[np.argmax(testable <= ks)])  # the first k that holds (k = all does)
        level = alpha / count
        name = remaining.pop(0)
        thresholds[name] = level
        if not stopped and p_values[name] <= level:
            rejected.add(name)
        else:
            stopped = True
    return rejected, thresholds


def _one_hot(indices: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float64)[indices]


def _scores(weights: np.ndarray, truth: np.ndarray, answer: np.ndarray, k: int) -> tuple:
    """Per resample: the four macro metrics and each class's recall, from image-type counts.

    ``weights`` is (resamples, types); each type is one (true class, answer) combination.
    """
    truth_hot = _one_hot(truth, k)
    answer_hot = _one_hot(answer, k)
    tp = weights @ (truth_hot * answer_hot)
    support = weights @ truth_hot
    predicted = weights @ answer_hot
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    total = support.sum(axis=1)
    macro = {
        "accuracy": tp.sum(axis=1) / np.where(total > 0, total, 1),
        "f1_macro": f1.mean(axis=1),
        "precision_macro": precision.mean(axis=1),
        "recall_macro": recall.mean(axis=1),
    }
    return macro, recall


@dataclass(frozen=True)
class Bootstrap:
    """Observed and resampled differences, candidate minus current."""

    metric: str
    candidate: float
    current: float
    difference: np.ndarray  # (resamples,) of the metric
    recall_difference: np.ndarray  # (resamples, classes)

    def interval(self, values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)


def _types(paired: Paired) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (true class, candidate answer, current answer) of the test images, sorted
    by class, and how many images each has: images of one type are interchangeable."""
    k = len(paired.class_names)
    codes, counts = np.unique(
        (paired.labels * k + paired.candidate) * k + paired.current, return_counts=True
    )
    return np.stack([codes // (k * k), codes // k % k, codes % k], axis=1), counts


def bootstrap(paired: Paired, metric: str, resamples: int = RESAMPLES, seed: int = 0) -> Bootstrap:
    """A paired bootstrap stratified by class: the metric and every class's recall, both models.

    Images are resampled within their class (each class keeps its size), the same images for
    both models. Images of one type (``_types``) are interchangeable, so each class is
    resampled as a multinomial over its few types, which keeps this fast on large test sets.
    Seeded: the same inputs give the same result.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")
    k = len(paired.class_names)
    types, counts = _types(paired)
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(types)))
    bounds = np.searchsorted(types[:, 0], np.arange(k + 1))
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if stop > start:
            size = counts[start:stop].sum()
            weights[:, start:stop] = rng.multinomial(
                size, counts[start:stop] / size, size=resamples
            )
    observed = counts[None, :].astype(np.float64)
    cand_obs, _ = _scores(observed, types[:, 0], types[:, 1], k)
    cur_obs, _ = _scores(observed, types[:, 0], types[:, 2], k)
    cand, cand_recall = _scores(weights, types[:, 0], types[:, 1], k)
    cur, cur_recall = _scores(weights, types[:, 0], types[:, 2], k)
    return Bootstrap(
        metric=metric,
        candidate=float(cand_obs[metric][0]),
        current=float(cur_obs[metric][0]),
        difference=cand[metric] - cur[metric],
        recall_difference=cand_recall - cur_recall,
    )


def permutation_worse(
    paired: Paired, metric: str, resamples: int = RESAMPLES, seed: int = 0
) -> float:
    """One-sided p-value that the candidate's ``metric`` is lower: a paired randomisation test.

    If the two models were interchangeable, swapping their answers on any image would change
    nothing in law; each resample swaps each image's pair of answers with chance 1/2, and the
    p-value is the share of resamples whose difference (candidate minus current) is at most the
    observed one (counting the observed one). Exact at any size of test set, unlike bootstrap
    p-values, which reject too often on small ones. Seeded.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")
    k = len(paired.class_names)
    types, counts = _types(paired)
    kept = np.random.default_rng(seed).binomial(counts, 0.5, size=(resamples, len(types)))
    weights = np.concatenate([kept, counts - kept], axis=1).astype(np.float64)
    truth = np.concatenate([types[:, 0], types[:, 0]])
    first = np.concatenate([types[:, 1], types[:, 2]])  # the candidate's seat
    second = np.concatenate([types[:, 2], types[:, 1]])
    observed = counts[None, :].astype(np.float64)
    difference = (
        _scores(observed, types[:, 0], types[:, 1], k)[0][metric][0]
        - _scores(observed, types[:, 0], types[:, 2], k)[0][metric][0]
    )
    resampled = (
        _scores(weights, truth, first, k)[0][metric]
        - _scores(weights, truth, second, k)[0][metric]
    )
    return float((1 + np.sum(resampled <= difference + 1e-12)) / (resamples + 1))


# --- planning: what a test set of a given size can show -----------------------------------


def power(n: int, recall: float, drop: float, level: float, margin: float) -> float:
    """Chance that a class of ``n`` test images whose recall falls from ``recall`` by ``drop``
    is called worse: McNemar significant at ``level`` and the observed drop over ``margin``.

    Assumes the two models err independently: an image is "only the current model right" with
    probability ``recall * (1 - (recall - drop))`` and "only the candidate right" with
    ``(1 - recall) * (recall - drop)``.
    """
    if n <= 0 or drop <= 0:
        return 0.0
    worse = min(max(recall - drop, 0.0), 1.0)
    p_b = recall * (1 - worse)
    p_w = (1 - recall) * worse
    if p_b + p_w <= 0:
        return 0.0
    m = np.arange(n + 1)
    # the least b that McNemar calls significant, given m disagreements
    critical = stats.binom.ppf(1 - level, m, 0.5) + 1
    critical = np.where(stats.binom.sf(critical - 2, m, 0.5) <= level, critical - 1, critical)
    needed = np.maximum(critical, np.floor((m + margin * n) / 2) + 1)
    caught = stats.binom.sf(needed - 1, m, p_b / (p_b + p_w))
    return float(np.sum(stats.binom.pmf(m, n, p_b + p_w) * caught))


def detectable_drop(
    n: int, recall: float, level: float, margin: float, target: float = POWER
) -> float | None:
    """The smallest recall drop (in steps of 0.01) caught with chance ``target``; None when
    even losing all of ``recall`` would not be."""
    for drop in np.arange(0.01, recall + 1e-9, 0.01):
        if power(n, recall, float(drop), level, margin) >= target:
            return round(float(drop), 2)
    return None


def images_needed(
    recall: float, drop: float, level: float, margin: float, target: float = POWER
) -> int | None:
    """The fewest test images of a class for a drop of ``drop`` to be caught with chance
    ``target``; None when no size up to 100,000 would do (a drop within the margin)."""
    if drop <= margin or recall - drop < 0:
        return None
    high = 8
    while power(high, recall, drop, level, margin) < target:
        high *= 2
        if high > 100_000:
            return None
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        if power(middle, recall, drop, level, margin) >= target:
            high = middle
        else:
            low = middle
    return high
