"""Data: the images on disk and everything that reads or changes them.

``folders`` (the data set: train/ and test/ class folders, discovery, fingerprints, the default
digits set), ``preprocessing`` (the one decode path, shared by training and serving), ``cache``
(decoded images on disk, read by training), ``augment`` (on-device augmentation), ``imagestats``
(per-image statistics for EDA and drift), ``eda``; uploads: ``uploads`` (store an upload batch),
``uploadrules`` (its lock and label rule), ``manifest`` (the one owner of a batch's manifest),
``curation`` (list, delete, rename, merge uploaded classes and batches, atomically),
``neardup`` (content fingerprints: the same picture resized or re-encoded), ``audit`` (an
upload's leaks of test images, held out, and near-duplicates).
"""
