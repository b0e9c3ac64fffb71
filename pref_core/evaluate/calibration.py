"""Temperature scaling of (n, 3) preference probabilities.

One scalar T is fit on out-of-fold predictions by minimising log loss; it
rescales the model's log-probabilities, p_T ∝ p^(1/T) (T > 1 softens, T < 1
sharpens), so the argmax and accuracy never change. With logits unavailable
after averaging folds, log-probabilities are the logits up to a per-row
constant, which the softmax removes.
"""

from __future__ import annotations

import numpy as np

from pref_core.evaluate.metrics import compute_log_loss

_EPS = 1e-15
# Where fit_temperature searches; a fit at either end found no useful scale (e.g. uniform predictions push T up).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(n, 3) probabilities softened/sharpened by `temperature`, rows summing to 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / temperature  # (n, 3)
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T in `bounds` minimising log loss of apply_temperature(probs, T) against `labels`.

    Log loss is unimodal in log T for a fixed set of predictions, so a golden-section search on
    log T finds the minimum to ~1e-6 without scipy.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one labelled prediction")

    def loss(log_t: float) -> float:
        return compute_log_loss(labels, apply_temperature(probs, float(np.exp(log_t))))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-7:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2.0))


def temperature_at_bound(
    temperature: float, bounds: tuple[float, float] = TEMPERATURE_BOUNDS, rel: float = 1e-3
) -> bool:
    """True when a fitted `temperature` sits at either end of `bounds` (within `rel` relative distance)."""
    low, high = bounds
    return temperature <= low * (1 + rel) or temperature >= high * (1 - rel)
