"""Figures, tables and captions shown by the notebooks, the reports and the dashboard.

Each takes plain numbers (metrics from ``imgclf.model.evaluation``, a gate decision, counts) and
returns a matplotlib figure, a pandas table or a sentence; plotting libraries are imported
inside, so that importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from imgclf.model.evaluation import summary

if TYPE_CHECKING:
    import pandas as pd


def _figure(width: float = 6, height: float = 4):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), layout="constrained")


def plot_history(history: dict[str, list[float]]):
    """Plot training and validation loss and accuracy per epoch (seaborn); returns the figure.

    The epoch whose weights were kept (lowest validation loss) is marked.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None
    for axis, key in zip(axes, ("loss", "accuracy"), strict=True):
        rows = [
            {"epoch": epoch, "value": value, "data": name}
            for name, values in (
                ("training", history.get(key)),
                ("validation", history.get(f"val_{key}")),
            )
            for epoch, value in enumerate(values or [], start=1)
        ]
        if rows:
            sns.lineplot(
                pd.DataFrame(rows),
                x="epoch",
                y="value",
                hue="data",
                marker="o",
                markersize=3,
                ax=axis,
            )
        if best:
            axis.axvline(best, color="grey", linestyle="--", linewidth=1, label="kept")
        axis.set_title(key)
        axis.set_ylabel("")
    return figure


def training_table(history: dict[str, list[float]], rows: int = 8):
    """A compact table of training: a few evenly spaced epochs, the best one and the last.

    Returns:
        A pandas DataFrame indexed by epoch, with the recorded metrics rounded to 4 digits and a
        ``kept`` column marking the epoch whose weights were restored (lowest validation loss).
    """
    import pandas as pd

    table = pd.DataFrame({k: v for k, v in history.items() if v}).round(4)
    if "learning_rate" in table:  # halved on plateaus: too small for 4 decimals
        table["learning_rate"] = [f"{rate:.1e}" for rate in history["learning_rate"]]
    table.index = pd.RangeIndex(1, len(table) + 1, name="epoch")
    if table.empty:
        return table
    best = int(table["val_loss"].idxmin()) if "val_loss" in table else len(table)
    table["kept"] = ["✓" if epoch == best else "" for epoch in table.index]
    chosen = set(np.linspace(1, len(table), num=min(rows, len(table)), dtype=int)) | {best}
    return table.loc[sorted(chosen)]


def comparison_table(models: dict[str, dict]):
    """Headline and per-class figures of several models on one test set, side by side.

    Args:
        models: name -> ``classification_metrics`` result (a None value is left out).

    Returns:
        A pandas DataFrame: one row per figure (accuracy, macro F1, ..., then recall of each
        class), one column per model.
    """
    import pandas as pd

    columns = {}
    for name, metrics in models.items():
        if metrics is None:
            continue
        figures = {k: v for k, v in summary(metrics).items() if k != "n"}
        for cls, scores in metrics.get("per_class", {}).items():
            figures[f"recall of {cls}"] = scores["recall"]
        columns[name] = figures
    return pd.DataFrame(columns).round(4)


def per_class_table(candidate: dict, decision) -> pd.DataFrame:
    """The gate's evidence, one row a class: test images, both recalls, the difference with its
    95 % interval, the p-value and the level it was held to, the verdict, the smallest drop
    this many test images can detect, and what blocked promotion (empty when nothing did).

    Args:
        candidate: the candidate's ``classification_metrics``.
        decision: the gate's ``GateDecision`` (or its ``as_dict()``).
    """
    import pandas as pd

    decision = decision if isinstance(decision, dict) else decision.as_dict()
    compared = {row["class"]: row for row in decision.get("comparisons", [])}
    blocked = decision.get("blocked", {})
    rows = {}
    for name, scores in candidate.get("per_class", {}).items():
        row = compared.get(name, {})
        verdict = row.get("verdict") or ("blocked" if name in blocked else "not compared")
        rows[name] = {
            "test images": int(scores["support"]),
            "current recall": row.get("current_recall"),
            "candidate recall": float(scores["recall"]),
            "change": row.get("difference"),
            "95% interval": (
                f"{row['ci_low']:+.3f} to {row['ci_high']:+.3f}" if "ci_low" in row else ""
            ),
            "p": row.get("p_value"),
            "level": row.get("level"),
            "verdict": "blocked" if name in blocked else verdict,
            "detectable drop": row.get("detectable_drop"),
            "blocked": blocked.get(name, ""),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def overall_table(decision) -> pd.DataFrame:
    """The gate's overall comparison, then its checks on calibration and the unknown answer,
    a row each (empty with no current model)."""
    import pandas as pd

    decision = decision if isinstance(decision, dict) else decision.as_dict()
    overall = decision.get("overall") or {}
    if not overall:
        return pd.DataFrame()
    named = [(overall["metric"], overall)]
    named += [(f"{row['check']} ({row['what']})", row) for row in decision.get("trust", [])]
    return pd.DataFrame(
        [
            {
                "metric": name,
                "current": row["current"],
                "candidate": row["candidate"],
                "change": row["difference"],
                "95% interval": f"{row['ci_low']:+.4f} to {row['ci_high']:+.4f}",
                "p": row["p_value"],
                "level": row["level"],
                "verdict": row["verdict"],
            }
            for name, row in named
        ]
    )


def style_per_class(table):
    """The per-class table with the rows that blocked promotion highlighted (for notebooks)."""

    def mark(row):
        colour = "background-color: #f8d7da" if row["blocked"] else ""
        if not colour and row.get("verdict") == "not-enough-evidence":
            colour = "background-color: #fff3cd"
        return [colour] * len(row)

    return table.style.apply(mark, axis=1).format(precision=4, na_rep="-")


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str]):
    """Plot a confusion matrix as a seaborn heat map, counts in the cells; returns the figure."""
    import seaborn as sns

    matrix = np.asarray(matrix)
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axis = _figure(size, size * 0.85)
    sns.heatmap(
        matrix,
        annot=True,
        fmt="d",
        cmap="Blues",
        cbar_kws={"shrink": 0.8},
        ax=axis,
        xticklabels=list(class_names),
        yticklabels=list(class_names),
        annot_kws={"fontsize": 8},
    )
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.tick_params(axis="x", labelrotation=45)
    return figure


def sample_grid(split, per_class: int = 8, max_classes: int = 20, seed: int = 0):
    """Figure with ``per_class`` sample images in a row for each class (up to ``max_classes``)
    of a decoded split (``data.cache.CachedSplit``)."""
    from imgclf.data.eda import sample_indices

    num_classes = min(len(split.class_names), max_classes)
    indices = sample_indices(split.labels, num_classes, per_class, seed)
    return plot_image_grid(
        [split.images[i] for i in indices],
        [split.class_names[split.labels[i]] for i in indices],
        columns=per_class,
    )


def plot_image_grid(
    images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 8, title: str = ""
):
    """Show images (``(h, w, c)``, floats in [0, 1] or uint8) in a grid with a title each;
    returns the figure."""
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False, layout="constrained"
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, label in zip(axes.flat, images, titles, strict=False):
        image = np.asarray(image)
        image = image / 255.0 if image.dtype == np.uint8 else image
        axis.imshow(
            image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1
        )
        axis.set_title(label, fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def plot_class_distribution(counts: dict[str, dict[str, int]]):
    """Bar chart of images per class for one or more splits (``{split: {class: count}}``)."""
    figure, axis = _figure(max(6, 0.5 * len(next(iter(counts.values()), {})) + 3), 3.5)
    names = sorted({name for split in counts.values() for name in split})
    width = 0.8 / max(1, len(counts))
    positions = np.arange(len(names))
    for offset, (split, tally) in enumerate(counts.items()):
        axis.bar(positions + offset * width, [tally.get(n, 0) for n in names], width, label=split)
    axis.set_xticks(positions + width * (len(counts) - 1) / 2, names, rotation=45, ha="right")
    axis.set_ylabel("images")
    axis.legend()
    return figure


def plot_histograms(values: dict[str, np.ndarray], xlabel: str, bins: int = 30):
    """Overlaid density histograms of one statistic for several groups; returns the figure."""
    figure, axis = _figure(7, 3.5)
    arrays = [np.asarray(v, dtype=float) for v in values.values() if len(v)]
    if not arrays:
        return figure
    edges = np.histogram_bin_edges(np.concatenate(arrays), bins=bins)
    for name, array in values.items():
        if len(array):
            axis.hist(array, bins=edges, alpha=0.5, density=True, label=name)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("density")
    axis.legend(fontsize=8, ncols=2)
    return figure


def describe_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """One sentence on a confusion matrix: accuracy and the most frequent confusion."""
    matrix = np.asarray(matrix)
    total = int(matrix.sum())
    if total == 0:
        return "The confusion matrix is empty."
    correct = int(np.trace(matrix))
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    if errors.sum() == 0:
        return f"All {total} test images are classified correctly."
    true, predicted = np.unravel_index(int(errors.argmax()), errors.shape)
    return (
        f"{correct} of {total} test images ({correct / total:.1%}) are on the diagonal; the most "
        f"frequent mistake is '{class_names[true]}' taken for '{class_names[predicted]}' "
        f"({int(errors[true, predicted])} times), the pair to look at first."
    )


def describe_history(history: dict[str, list[float]]) -> str:
    """One sentence on training curves: best epoch, final gap between training and validation."""
    validation = history.get("val_loss") or []
    if not validation:
        return "No training history was recorded for this model."
    phases = history.get("phase") or []
    if phases and phases.count(1.0) == 1:  # the pretrained recipe: a linear head, fitted once
        head = (
            f"The head was fitted once, as a logistic regression on the frozen backbone's "
            f"features: accuracy {history['accuracy'][0]:.4f} on its training images, "
            f"{history['val_accuracy'][0]:.4f} on images it had not seen"
        )
        if len(phases) == 1:
            return head + "."
        tuned = validation[1:]
        kept = min(tuned) <= validation[0]
        return (
            f"{head}. Fine-tuning the last blocks for {len(tuned)} epoch(s) brought the "
            f"validation loss from {validation[0]:.4f} to {min(tuned):.4f}: "
            + ("kept." if kept else "dropped, the head-only model was kept.")
        )
    best = int(np.argmin(validation))
    gap = (history.get("val_accuracy") or [0])[-1] - (history.get("accuracy") or [0])[-1]
    fit = (
        "validation accuracy is above training accuracy, as expected with augmentation and "
        "dropout during training only"
        if gap > 0.005
        else "training and validation accuracy are close: no sign of overfitting"
        if gap > -0.03
        else "training accuracy is well above validation accuracy: the model overfits"
    )
    return (
        f"Validation loss was lowest at epoch {best + 1} of {len(validation)} "
        f"({validation[best]:.4f}), whose weights were kept; {fit}."
    )


def plot_reliability(calibration: dict):
    """The reliability diagram of the test images before and after temperature scaling: each
    bin's accuracy against its mean confidence (the diagonal is perfect calibration), with
    the ECE of each; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    figure, axis = plt.subplots(figsize=(4.5, 4), layout="constrained")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for key, label, ece in (
        ("bins_uncalibrated", "as trained", calibration["ece_uncalibrated"]),
        ("bins", f"T = {calibration['temperature']:.2f}", calibration["ece"]),
    ):
        bins = calibration[key]
        points = [
            (c, a)
            for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
            if c is not None
        ]
        if points:
            confidence, accuracy = zip(*points, strict=True)
            axis.plot(confidence, accuracy, marker="o", label=f"{label} (ECE {ece:.3f})")
    axis.set(
        xlabel="confidence (top class)",
        ylabel="accuracy",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
        title="Reliability on the test images",
    )
    axis.legend(loc="upper left", fontsize="small")
    return figure


def describe_trust(calibration: dict, unknown: dict) -> str:
    """Two sentences on the fitted temperature and the unknown threshold (for the reports)."""
    temperature = calibration["temperature"]
    direction = (
        "the model was over-confident: its probabilities are softened"
        if temperature > 1.0
        else "the model was under-confident: its probabilities are sharpened"
        if temperature < 1.0
        else "the probabilities are served as the model gives them"
    )
    fitted = calibration.get("fitted_temperature", temperature)
    if fitted != temperature:
        direction += (
            f" (the best fit alone, {fitted:.2f}, pulled towards 1 by the prior that "
            "temperatures are near 1: the fewer the images, the more)"
        )
    interval = calibration.get("interval")
    known = (
        f" (the best fit's 95 % interval: {interval[0]:.2f} to {interval[1]:.2f})"
        if interval
        else ""
    )
    target = unknown["false_unknown_target"]
    bound = unknown.get("false_unknown_bound", target)
    rests = (
        f"for at most {target:.0%} of images like the training ones"
        if bound <= target
        else f"aiming at {target:.0%} of images like the training ones, which so few images "
        f"cannot show: they only show it is below {bound:.0%} (95 % confidence)"
    )
    pooled = calibration.get("out_of_fold", 0)
    images = (
        f"{calibration['held_out']} validation images and the out-of-fold answers of the "
        f"linear head on {pooled} training images (each from a head fitted without it)"
        if pooled
        else f"{calibration['fitted_on']} validation images"
    )
    return (
        f"Temperature **{temperature:.2f}**, fitted on {images}{known}: {direction}. "
        "Expected calibration error on "
        f"{calibration['measured_on']} test images: {calibration['ece_uncalibrated']:.4f} as "
        f"trained, **{calibration['ece']:.4f}** after scaling. An image is answered *unknown* "
        "when its features are farther from every class than the threshold set on "
        f"{unknown['held_out_images']} held-out images, {rests} (Mahalanobis distance to the "
        "nearest class mean)."
    )
