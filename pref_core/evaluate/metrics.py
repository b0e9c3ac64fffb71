"""Scores of (n, 3) probability matrices against class indices: numpy only, no side effects.

Column k of every probability matrix is labels.LABEL_COLUMNS[k]; labels may be
class indices (n,) or one-hot rows (n, 3).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from pref_core.data.labels import LABEL_COLUMNS, NUM_CLASSES


def _as_indices(labels) -> np.ndarray:
    """(n,) int class indices from indices or one-hot rows, with a clear error for anything else."""
    arr = np.asarray(labels)
    if arr.ndim == 2:
        if arr.shape[1] != NUM_CLASSES or not np.isin(arr, (0, 1)).all() or not (arr.sum(axis=1) == 1).all():
            raise ValueError(f"2-D labels must be one-hot rows of {NUM_CLASSES} columns, got shape {arr.shape}")
        return arr.argmax(axis=1)
    if arr.ndim != 1:
        raise ValueError(f"labels must be (n,) class indices or (n, {NUM_CLASSES}) one-hot, got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be integers in 0..{NUM_CLASSES - 1}, got {np.unique(arr)[:10]}")
    return arr.astype(np.int64)


def _as_probs(probs, n: int) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.shape != (n, NUM_CLASSES):
        raise ValueError(f"probs must have shape ({n}, {NUM_CLASSES}) to match the labels, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("probs contain NaN or inf")
    return arr


def row_log_losses(labels, probs, eps: float = 1e-15) -> np.ndarray:
    """(n,) -ln p[label] of each row after clipping to [eps, 1-eps] and renormalizing it (as Kaggle scores it)."""
    y = _as_indices(labels)
    p = np.clip(_as_probs(probs, len(y)), eps, 1 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(y)), y])


def compute_log_loss(labels, probs, eps: float = 1e-15) -> float:
    """Mean of row_log_losses: the competition's multi-class log loss."""
    if np.asarray(labels).size == 0:
        raise ValueError("log loss of zero rows is undefined")
    return float(np.mean(row_log_losses(labels, probs, eps)))


def compute_accuracy(labels, probs) -> float:
    """Share of rows whose most probable class is the label."""
    y = _as_indices(labels)
    if y.size == 0:
        raise ValueError("accuracy of zero rows is undefined")
    return float(np.mean(_as_probs(probs, len(y)).argmax(axis=1) == y))


def count_classes(labels) -> dict[str, int]:
    """Rows per class, keyed by label column name (winner_model_a, winner_model_b, winner_tie)."""
    counts = np.bincount(_as_indices(labels), minlength=NUM_CLASSES)
    return {name: int(c) for name, c in zip(LABEL_COLUMNS, counts)}


def compute_prior_log_loss(labels, prior_labels: Optional[np.ndarray] = None) -> float:
    """Log loss of always predicting the class shares of `prior_labels` (default: `labels` themselves).

    The floor any model must beat; use the training labels as prior_labels to
    score a validation fold honestly.
    """
    y = _as_indices(labels)
    prior = _as_indices(y if prior_labels is None else prior_labels)
    if prior.size == 0:
        raise ValueError("prior_labels is empty; cannot estimate class shares")
    shares = np.bincount(prior, minlength=NUM_CLASSES) / prior.size
    return compute_log_loss(y, np.tile(shares, (len(y), 1)))


def summarize_predictions(labels, probs) -> dict[str, float]:
    """log_loss, accuracy, prior_log_loss (class shares of these labels) and n, for logging."""
    y = _as_indices(labels)
    return {
        "log_loss": compute_log_loss(y, probs),
        "accuracy": compute_accuracy(y, probs),
        "prior_log_loss": compute_prior_log_loss(y),
        "n": int(len(y)),
    }
