"""Model: the network, how it is trained, scored, versioned and asked.

``network`` (build, compile, fit, save, load, widen the head), ``batches`` (devices and the
batches fed to training and inference), ``training`` (load the data set, train, fine-tune),
``evaluation`` (metrics), ``registry`` (versions on disk, the current pointer, rollback),
``prediction`` (the ``Predictor`` the API serves with, hot-reloading the current version).
"""
