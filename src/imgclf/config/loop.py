"""The learning loop's settings: the promotion gate, retention, automatic retraining, drift."""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.config.catalogue import BY_NAME, value

#: The promotion gate's figures and their ranges: the one list the settings, the API's retrain
#: parameters and the gate itself check against (``imgclf.loop.gate``).
GATE_RANGES = {
    "tolerance": (0.0, 1.0),
    **{
        field: (BY_NAME[variable].low, BY_NAME[variable].high)
        for field, variable in (
            ("min_test_images", "GATE_MIN_TEST_IMAGES"),
            ("max_recall_drop", "GATE_MAX_RECALL_DROP"),
            ("min_new_class_recall", "GATE_MIN_NEW_CLASS_RECALL"),
            ("alpha", "GATE_ALPHA"),
        )
    },
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
    """Return the learning loop's settings (``variables.toml``: the ``loop`` group).

    Raises:
        ConfigError: a value of the wrong kind or out of range, naming the variable.
    """
    return LoopSettings(
        upload_test_share=value("UPLOAD_TEST_SHARE"),
        min_test_images=value("GATE_MIN_TEST_IMAGES"),
        max_recall_drop=value("GATE_MAX_RECALL_DROP"),
        min_new_class_recall=value("GATE_MIN_NEW_CLASS_RECALL"),
        alpha=value("GATE_ALPHA"),
        retain_images=value("RETAIN_IMAGES"),
        retain_hours=value("RETAIN_HOURS"),
        retain_max_mb=value("RETAIN_MAX_MB"),
        auto_retrain=value("AUTO_RETRAIN"),
        auto_min_images=value("AUTO_RETRAIN_MIN_IMAGES"),
        auto_on_drift=value("AUTO_RETRAIN_ON_DRIFT"),
        auto_min_interval_s=value("AUTO_RETRAIN_MIN_INTERVAL_S"),
        drift_min_sample=value("DRIFT_MIN_SAMPLE"),
        drift_p_value=value("DRIFT_P_VALUE"),
        drift_window=value("DRIFT_WINDOW"),
        drift_min_clients=value("AUTO_RETRAIN_DRIFT_MIN_CLIENTS"),
        unknown_false_rate=value("UNKNOWN_FALSE_RATE"),
    )
