"""Trainer callbacks of a fold: the validation pass that doubles as the held-out prediction pass, and logging.

`ValidationRecorder` is both the Trainer's `compute_metrics` (val_log_loss / val_accuracy) and a callback that
keeps the latest validation probabilities; `LoggingCallback` sends the Trainer's logs to Python logging.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from transformers import TrainerCallback

from pref_core.evaluate.metrics import compute_accuracy, compute_log_loss

logger = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, 3) logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class ValidationRecorder(TrainerCallback):
    """The Trainer's `compute_metrics` that also keeps the latest validation probabilities.

    The final validation pass then doubles as the held-out prediction pass (no second forward over
    the validation rows). `step` is the global step of the kept probabilities.
    """

    def __init__(self) -> None:
        self.probabilities: Optional[np.ndarray] = None  # (n, 3), in the evaluated dataset's order
        self.step: Optional[int] = None
        self._pending: Optional[np.ndarray] = None

    def __call__(self, eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, tuple):  # a model returning extra outputs; logits come first
            logits = logits[0]
        labels = np.asarray(eval_prediction.label_ids)
        probabilities = softmax(np.asarray(logits))
        self._pending = probabilities
        # The Trainer prefixes these with the metric_key_prefix: val_log_loss, val_accuracy.
        return {
            "log_loss": compute_log_loss(labels, probabilities),
            "accuracy": compute_accuracy(labels, probabilities),
        }

    def on_evaluate(self, args, state, control, **kwargs):
        if self._pending is not None:
            self.probabilities, self.step, self._pending = self._pending, state.global_step, None


class LoggingCallback(TrainerCallback):
    """Trainer logs (loss, learning rate, val metrics) to Python logging instead of stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
            logger.info("step %d/%d: %s", state.global_step, state.max_steps, shown)
