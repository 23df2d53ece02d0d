"""The learning loop's settings: the promotion gate, retention, automatic retraining, drift."""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.config.readers import _float, _int, _read_all

#: The promotion gate's figures and their ranges: the one list the settings, the API's retrain
#: parameters and the gate itself check against (``imgclf.loop.gate``).
GATE_RANGES = {
    "tolerance": (0.0, 1.0),
    "min_test_images": (0, 100_000),
    "max_recall_drop": (0.0, 1.0),
    "min_new_class_recall": (0.0, 1.0),
    "alpha": (0.0001, 0.5),
}


@dataclass(frozen=True)
class LoopSettings:
    """The learning loop: how uploads are split, what the gate demands, how long prediction
    images are kept, when retraining starts by itself, and when inputs count as drifted."""

    upload_test_share: float
    min_test_images: int
    max_recall_drop: float
    min_new_class_recall: float
    alpha: float
    retain_images: int
    retain_hours: float
    retain_max_mb: float
    auto_retrain: bool
    auto_min_images: int
    auto_on_drift: bool
    auto_min_interval_s: float
    drift_min_sample: int
    drift_p_value: float
    drift_window: int
    drift_min_clients: int = 5
    unknown_false_rate: float = 0.05


def get_loop_settings() -> LoopSettings:
    """Return the learning loop's settings from the environment.

    ``UPLOAD_TEST_SHARE`` (0.2: share of uploaded images kept for testing),
    ``GATE_MIN_TEST_IMAGES`` (5 per class), ``GATE_MAX_RECALL_DROP`` (0.05),
    ``GATE_MIN_NEW_CLASS_RECALL`` (0.5), ``GATE_ALPHA`` (0.05: the chance of rejecting a
    candidate as good as the current model),
    ``RETAIN_IMAGES`` (10000 prediction images kept; 0: none), ``RETAIN_HOURS`` (168) and
    ``RETAIN_MAX_MB`` (1024: their bytes, oldest evicted first),
    ``AUTO_RETRAIN`` (0: off, 1: on), ``AUTO_RETRAIN_MIN_IMAGES`` (50 new labelled images),
    ``AUTO_RETRAIN_ON_DRIFT`` (0/1), ``AUTO_RETRAIN_MIN_INTERVAL_S`` (3600),
    ``DRIFT_MIN_SAMPLE`` (30 production images), ``DRIFT_P_VALUE`` (0.01),
    ``DRIFT_WINDOW`` (500 latest predictions), ``AUTO_RETRAIN_DRIFT_MIN_CLIENTS`` (5 distinct
    clients among them before drift may start a retrain), ``UNKNOWN_FALSE_RATE`` (0.05: the
    share of images like the training ones a model's "unknown" threshold may call unknown).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    values = _read_all(
        {
            "UPLOAD_TEST_SHARE": (_float, 0.2, 0.0, 0.9),
            "GATE_MIN_TEST_IMAGES": (_int, 5, *GATE_RANGES["min_test_images"]),
            "GATE_MAX_RECALL_DROP": (_float, 0.05, *GATE_RANGES["max_recall_drop"]),
            "GATE_MIN_NEW_CLASS_RECALL": (_float, 0.5, *GATE_RANGES["min_new_class_recall"]),
            "GATE_ALPHA": (_float, 0.05, *GATE_RANGES["alpha"]),
            "RETAIN_IMAGES": (_int, 10_000, 0, 10_000_000),
            "RETAIN_HOURS": (_float, 168.0, 0.0, 87_600.0),
            "RETAIN_MAX_MB": (_float, 1024.0, 0.0, 10_000_000.0),
            "AUTO_RETRAIN": (_int, 0, 0, 1),
            "AUTO_RETRAIN_MIN_IMAGES": (_int, 50, 1, 10_000_000),
            "AUTO_RETRAIN_ON_DRIFT": (_int, 0, 0, 1),
            "AUTO_RETRAIN_MIN_INTERVAL_S": (_float, 3600.0, 0.0, 31_536_000.0),
            "DRIFT_MIN_SAMPLE": (_int, 30, 5, 1_000_000),
            "DRIFT_P_VALUE": (_float, 0.01, 1e-9, 0.5),
            "DRIFT_WINDOW": (_int, 500, 10, 1_000_000),
            "AUTO_RETRAIN_DRIFT_MIN_CLIENTS": (_int, 5, 1, 1_000_000),
            "UNKNOWN_FALSE_RATE": (_float, 0.05, 0.001, 0.5),
        }
    )
    return LoopSettings(
        upload_test_share=values["UPLOAD_TEST_SHARE"],
        min_test_images=values["GATE_MIN_TEST_IMAGES"],
        max_recall_drop=values["GATE_MAX_RECALL_DROP"],
        min_new_class_recall=values["GATE_MIN_NEW_CLASS_RECALL"],
        alpha=values["GATE_ALPHA"],
        retain_images=values["RETAIN_IMAGES"],
        retain_hours=values["RETAIN_HOURS"],
        retain_max_mb=values["RETAIN_MAX_MB"],
        auto_retrain=bool(values["AUTO_RETRAIN"]),
        auto_min_images=values["AUTO_RETRAIN_MIN_IMAGES"],
        auto_on_drift=bool(values["AUTO_RETRAIN_ON_DRIFT"]),
        auto_min_interval_s=values["AUTO_RETRAIN_MIN_INTERVAL_S"],
        drift_min_sample=values["DRIFT_MIN_SAMPLE"],
        drift_p_value=values["DRIFT_P_VALUE"],
        drift_window=values["DRIFT_WINDOW"],
        drift_min_clients=values["AUTO_RETRAIN_DRIFT_MIN_CLIENTS"],
        unknown_false_rate=values["UNKNOWN_FALSE_RATE"],
    )
