"""Data checks on the default data set: what training relies on, checked on the data itself."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from imgclf.data import cache, folders


@pytest.fixture(scope="module")
def splits(digits_dir) -> tuple[folders.Split, folders.Split]:
    train = folders.discover(digits_dir / "train")
    return train, folders.discover(digits_dir / "test", class_names=train.class_names)


def test_both_splits_have_the_ten_digit_classes(splits):
    train, test = splits
    assert train.class_names == test.class_names == [str(d) for d in range(10)]


def test_every_class_has_enough_images_and_the_split_is_stratified(splits):
    train, test = splits
    train_counts, test_counts = np.bincount(train.labels), np.bincount(test.labels)
    assert train_counts.min() >= 100 and test_counts.min() >= 30
    shares = test_counts / (train_counts + test_counts)
    assert np.allclose(shares, 0.2, atol=0.02), shares


def test_every_image_is_readable_and_grayscale_8_by_8(splits, tmp_path):
    for split in splits:  # decoded as training and serving decode them (the cache)
        decoded = cache.load(split, 8, "grayscale", tmp_path)
        assert not decoded.skipped and len(decoded) == len(split.paths)
        assert decoded.images[:].shape == (len(split.paths), 8, 8, 1)
        assert decoded.images[:].max() > 0


def test_no_test_image_is_also_a_training_image(splits):
    train, test = splits

    def digests(split):
        return {hashlib.sha256(path.read_bytes()).hexdigest() for path in split.paths}

    assert not digests(train) & digests(test)
