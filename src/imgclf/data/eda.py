"""Exploratory analysis: figures and the sentences that interpret them, computed from the data.

The interpretations are written by code, not by hand in the notebook, so that they stay true
for any data set the notebook is pointed at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def describe_balance(counts: dict[str, int]) -> str:
    """One sentence on class balance (imbalance ratio, smallest and largest class)."""
    if not counts:
        return "No images were found."
    smallest = min(counts, key=counts.get)
    largest = max(counts, key=counts.get)
    ratio = counts[largest] / max(1, counts[smallest])
    verdict = (
        "The classes are balanced"
        if ratio < 1.5
        else "The classes are moderately imbalanced"
        if ratio < 3
        else "The classes are strongly imbalanced (training repeats classes under the `balance` "
        f"share of the median class); more data for '{smallest}' would help most"
    )
    return (
        f"{verdict}: {sum(counts.values())} images in {len(counts)} classes, from "
        f"{counts[smallest]} ('{smallest}') to {counts[largest]} ('{largest}'), a ratio of "
        f"{ratio:.2f}."
    )


def describe_sizes(sizes: np.ndarray) -> str:
    """One sentence on the original image sizes (``(n, 2)`` widths and heights)."""
    if len(sizes) == 0:
        return "No image sizes could be read."
    widths, heights = sizes[:, 0], sizes[:, 1]
    distinct = len({tuple(s) for s in sizes.tolist()})
    if distinct == 1:
        return (
            f"Every image is {widths[0]}x{heights[0]} pixels, so resizing treats all of "
            "them alike."
        )
    aspect = widths / np.maximum(heights, 1)
    return (
        f"Sizes vary ({distinct} distinct): widths {widths.min()}-{widths.max()} and heights "
        f"{heights.min()}-{heights.max()} pixels (median {int(np.median(widths))}x"
        f"{int(np.median(heights))}); aspect ratios span {aspect.min():.2f}-{aspect.max():.2f}, "
        "and resizing to a square stretches the images outside 1.0."
    )


def describe_statistic(
    values: np.ndarray, labels: np.ndarray, class_names: Sequence[str], name: str
) -> str:
    """One sentence comparing a per-image statistic across classes (means, spread, extremes)."""
    means = {
        class_names[c]: float(values[labels == c].mean())
        for c in range(len(class_names))
        if np.any(labels == c)
    }
    low, high = min(means, key=means.get), max(means, key=means.get)
    spread = float(values.std())
    between = float(np.std(list(means.values())))
    separation = (
        "differs clearly between classes, so it carries some class information"
        if between > 0.5 * spread
        else "is similar across classes, so the model must rely on shape, not on this statistic"
    )
    return (
        f"Mean {name} is {float(values.mean()):.3f} (standard deviation {spread:.3f}); it "
        f"{separation}: lowest for '{low}' ({means[low]:.3f}), highest for '{high}' "
        f"({means[high]:.3f})."
    )


def sample_indices(
    labels: np.ndarray, num_classes: int, per_class: int, seed: int = 0
) -> list[int]:
    """Return up to ``per_class`` random indices of each class, class by class."""
    rng = np.random.default_rng(seed)
    chosen = []
    for index in range(num_classes):
        members = np.flatnonzero(labels == index)
        chosen.extend(rng.permutation(members)[:per_class].tolist())
    return chosen


def per_class_values(values: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Group one statistic by class name, for ``figures.plot_histograms``."""
    return {name: values[labels == index] for index, name in enumerate(class_names)}
