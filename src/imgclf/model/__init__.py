"""Model: the network, how it is trained, scored, versioned and asked.

``network`` (build, compile, fit, save, load, widen the head), ``efficientnet_lite`` and
``torchweights`` (the pretrained backbone and its ImageNet weights, offline), ``taps`` (which
of its layers give the features), ``batches`` (devices and the batches fed to training and
inference), ``training`` (load the data set, train, fine-tune),
``posthoc`` (fitted after training on held-out images: ``calibration``'s temperature and
``novelty``'s unknown answer), ``evaluation`` (metrics), ``saliency`` (explanations), ``ood``
(images unlike any class, for tests and reports), ``registry`` (versions on disk, the current
pointer, rollback), ``prediction`` (the ``Predictor`` the API serves with, hot-reloading the
current version), ``runtime`` and ``ovexport`` (OpenVINO).
"""
