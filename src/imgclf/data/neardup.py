"""Near-duplicates judged on content: the same picture resized, re-encoded or cropped by a few
pixels, which a SHA-256 (``uploads.HashIndex``) cannot see.

A classifier's features pull every member of a class together, so "the same picture" is judged
on the pixels instead: the image in grey, resized to ``SIDE`` pixels a side, its ``KEEP`` x
``KEEP`` lowest two-dimensional DCT frequencies but the constant one (a perceptual hash kept as
numbers, not bits), scaled to unit length. Two images are near-duplicates when the cosine
similarity of their fingerprints is at least ``THRESHOLD``, measured by ``make bench-data``
(``devkit.bench_data``) on planted copies of the digits and of Fashion-MNIST, not guessed.
Neighbours are found by scikit-learn (``NearestNeighbors``, brute force on the cosine).

A blank image has no fingerprint to speak of (all zeros): it is nobody's near-duplicate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SIDE = 64
KEEP = 16
#: Cosine similarity from which two fingerprints are the same picture (``make bench-data``).
THRESHOLD = 0.99


def fingerprint(source: bytes | Path | Image.Image) -> np.ndarray:
    """The unit-length fingerprint (``KEEP**2 - 1`` numbers) of an image's content."""
    from scipy.fft import dctn

    if isinstance(source, Image.Image):
        image = source
    else:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    with image:
        grey = ImageOps.exif_transpose(image).convert("L")
        small = grey.resize((SIDE, SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = np.asarray(small, np.float32)
    low = dctn(pixels, norm="ortho")[:KEEP, :KEEP].ravel()[1:]
    length = float(np.linalg.norm(low))
    return (low / length if length > 1e-6 else np.zeros_like(low)).astype(np.float32)


@dataclass(frozen=True)
class Match:
    """The nearest known image to a query, and how alike they are (cosine, -1 to 1)."""

    query: int
    known: int
    similarity: float


def nearest(queries: np.ndarray, known: np.ndarray) -> list[Match]:
    """For each row of ``queries``, its most similar row of ``known`` (none when ``known`` is
    empty)."""
    from sklearn.neighbors import NearestNeighbors

    if len(queries) == 0 or len(known) == 0:
        return []
    finder = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(known)
    distance, index = finder.kneighbors(queries)
    return [
        Match(i, int(index[i, 0]), float(1.0 - distance[i, 0]))
        for i in range(len(queries))
        if np.any(queries[i])  # a blank image matches nothing
    ]


def duplicates(queries: np.ndarray, known: np.ndarray, threshold: float = THRESHOLD) -> list:
    """The ``Match`` of every query that nearly duplicates a known image."""
    return [match for match in nearest(queries, known) if match.similarity >= threshold]


def within(fingerprints: np.ndarray, threshold: float = THRESHOLD) -> list[Match]:
    """Pairs inside one set that nearly duplicate each other: each later image's most similar
    image among those before it (the first of a group is the original)."""
    similarity = fingerprints @ fingerprints.T
    found = []
    for i in range(1, len(fingerprints)):
        if not np.any(fingerprints[i]):
            continue
        j = int(np.argmax(similarity[i, :i]))
        if similarity[i, j] >= threshold:
            found.append(Match(i, j, float(similarity[i, j])))
    return found
