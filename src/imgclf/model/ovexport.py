"""``python -m imgclf.model.ovexport MODEL.keras OUT.xml [MODULE ...]``: convert a registered model
for OpenVINO, in a process of its own whose Keras backend is ``openvino``
(``imgclf.model.runtime.export`` starts it so; Keras picks its backend once per process).

The IR has two outputs, as ``imgclf.model.posthoc.with_features`` builds them: the pooled
features (for the unknown answer) and the probabilities. ``MODULE``s are imported first: those
that registered the model's custom Keras objects in the parent. When a layer cannot be
converted, the last line of standard output is JSON, ``{"layer": "'name' (Class)", "error":
"..."}``, naming the innermost layer whose call failed, and the exit status is 3.
"""

from __future__ import annotations

import importlib
import json
import sys


def _name_failing_layers(keras) -> None:
    """Make every layer call mark an exception passing through it with the innermost layer."""
    original = keras.layers.Layer.__call__

    def traced(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except Exception as error:
            if not hasattr(error, "imgclf_layer"):
                try:
                    error.imgclf_layer = f"{self.name!r} ({type(self).__name__})"
                except AttributeError:  # an exception type without a __dict__
                    pass
            raise

    keras.layers.Layer.__call__ = traced


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    model_file, xml, modules = argv[0], argv[1], argv[2:]
    import keras

    if keras.backend.backend() != "openvino":
        print(json.dumps({"layer": None, "error": "run with KERAS_BACKEND=openvino"}))
        return 2
    _name_failing_layers(keras)
    try:
        for module in modules:
            importlib.import_module(module)
        from imgclf.model.posthoc import with_features

        model = keras.saving.load_model(model_file, compile=False)
        with_features(model).export(xml, format="openvino", verbose=False)
    except Exception as error:
        layer = getattr(error, "imgclf_layer", None)
        print(json.dumps({"layer": layer, "error": f"{type(error).__name__}: {error}"}))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
