"""Test-split metrics: accuracy, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for i, label in enumerate(labels):
        tp = int(confusion[i, i])
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4),
                            "f1": round(f1, 4), "support": actual}
    count = int(len(y_true))
    return {
        "split": "test",
        "count": count,
        "accuracy": round(float((y_true == y_pred).mean()), 4) if count else None,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),  # rows: true label, columns: predicted
    }
