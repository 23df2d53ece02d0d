"""imgclf: a notebook-centred image-classification pipeline (Keras 3 on JAX).

Importing the package chooses Keras' backend, JAX, before anything can import keras (an
explicit ``KERAS_BACKEND`` still wins): every entry point, the installed ``imgclf`` console
script and the notebooks' kernels (which inherit the environment) included. Nothing else
happens at import; see ``imgclf.config`` for settings and the Makefile for entry points.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"
