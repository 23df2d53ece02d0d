"""imgclf: a notebook-centred image-classification pipeline (Keras 3 on JAX).

Nothing happens at import; see ``imgclf.config`` for settings and the Makefile for entry points.
"""

__version__ = "0.1.0"
