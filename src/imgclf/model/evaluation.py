"""Metrics (scikit-learn): what a model's answers on the test split score.

Figures, tables and captions of them are ``imgclf.figures``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

#: The metric the promotion gate compares, unless told otherwise.
GATE_METRIC = "f1_macro"


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Return loss, accuracy, macro precision/recall/F1, per-class scores and the confusion matrix.

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: predicted probabilities, shape ``(n, len(class_names))``.

    Returns:
        A JSON-ready dict: ``loss``, ``accuracy``, ``precision_macro``, ``recall_macro``,
        ``f1_macro``, ``per_class`` (name -> precision/recall/f1/support), ``confusion_matrix``
        (rows: true class, columns: predicted) and ``n``.

    Raises:
        ValueError: the shapes disagree.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(labels), len(class_names)):
        raise ValueError(
            f"probabilities shape {probabilities.shape} does not match "
            f"{len(labels)} labels x {len(class_names)} classes"
        )
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    clipped = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    return {
        "n": int(len(labels)),
        "loss": float(-np.mean(np.log(clipped))),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=indices).tolist(),
    }


def classification_report(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> str:
    """Return scikit-learn's text classification report."""
    return skm.classification_report(
        labels,
        np.asarray(probabilities).argmax(axis=1),
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        digits=4,
        zero_division=0,
    )


def summary(metrics: dict) -> dict:
    """Return the headline figures of ``classification_metrics`` (no per-class detail)."""
    keys = ("n", "loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")
    return {key: metrics[key] for key in keys if key in metrics}


# --- figures -------------------------------------------------------------------------------


def misclassified(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], limit: int = 32
) -> tuple[list[int], list[str]]:
    """Return the indices of wrong predictions (most confident first) and a title for each."""
    predicted = np.asarray(probabilities).argmax(axis=1)
    wrong = np.flatnonzero(predicted != np.asarray(labels))
    wrong = wrong[np.argsort(-np.asarray(probabilities)[wrong, predicted[wrong]])][:limit]
    titles = [
        f"true {class_names[labels[i]]}\npred {class_names[predicted[i]]} "
        f"{probabilities[i, predicted[i]]:.2f}"
        for i in wrong
    ]
    return [int(i) for i in wrong], titles
