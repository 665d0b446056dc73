"""Scores, in numpy only, so the study (torch) and `validate` (onnxruntime on a recorder) compute them identically.

UAR (unweighted average recall) is the mean of per-class recalls over the classes present in the reference labels,
which is what scikit-learn's ``balanced_accuracy_score`` computes. A class the model predicts but that never occurs
in the reference does not count; a class that occurs and is never predicted counts as recall 0.
"""

from __future__ import annotations

import numpy as np


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted average recall (macro recall over classes present in ``y_true``), in [0, 1]."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("cannot score an empty set of clips")
    classes = np.unique(y_true)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in classes]
    return float(np.mean(recalls))


def bootstrap_uar_ci(y_true: np.ndarray, y_pred: np.ndarray, *, n_resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of UAR, resampling clips with replacement (seeded)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    n = y_true.size
    scores = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        scores[i] = uar(y_true[idx], y_pred[idx])
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(scores, alpha)), float(np.quantile(scores, 1.0 - alpha))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are reference classes, columns predictions (counts)."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix
