"""Which unlabelled images to ask a person about first: uncertain, and unlike each other.

Arrival order wastes a labeller's time on images the model already gets right, and the least
confident first asks about the same confusing picture many times over. ``useful_order``
keeps the ``POOL_FACTOR`` x ``count`` images of smallest **margin** (the calibrated top
probability minus the second: where the model hesitates between two classes) and picks among
them by **k-centre greedy** on the model's features, weighted by doubt (each next image the
one whose distance from those already picked, times one minus its margin, is largest), so that
one request covers the different kinds of doubt and a confident image comes last. ``GET
/review?order=useful`` and the Review tab use it; ``make bench-data`` measures the accuracy it
buys per label against random picks.
"""

from __future__ import annotations

import numpy as np

#: The uncertain pool the diverse picks are drawn from, as a multiple of the picks wanted
POOL_FACTOR = 3


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top probability minus the second, per row (0: a tie between two classes)."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top = np.sort(probabilities, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def useful_order(
    probabilities: np.ndarray,
    features: np.ndarray,
    count: int,
    known: np.ndarray | None = None,
) -> list[int]:
    """Indices of the ``count`` rows most worth a label, in the order to ask (see the module).
    ``known``: features of images already labelled, which the picks keep away from."""
    count = min(count, len(probabilities))
    if count <= 0:
        return []
    pool = np.argsort(margins(probabilities), kind="stable")[: POOL_FACTOR * count]
    doubt = 1.0 - margins(probabilities)[pool]  # each pick weighs distance by doubt
    points = np.asarray(features, np.float64)[pool]
    scale = np.linalg.norm(points, axis=1, keepdims=True)
    points = points / np.where(scale > 0, scale, 1.0)  # cosine geometry: brightness aside
    if known is not None and len(known):
        anchors = np.asarray(known, np.float64)
        anchors = anchors / np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
        nearest = np.min(_distances(points, anchors), axis=1)
        first = int(np.argmax(nearest * doubt))
    else:
        nearest = np.full(len(points), np.inf)
        first = 0  # the smallest margin
    picked = [first]
    nearest = np.minimum(nearest, _distances(points, points[[first]])[:, 0])
    while len(picked) < count:
        score = nearest * doubt
        score[picked] = -np.inf  # never twice
        chosen = int(np.argmax(score))
        picked.append(chosen)
        nearest = np.minimum(nearest, _distances(points, points[[chosen]])[:, 0])
    return [int(pool[i]) for i in picked]


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))
