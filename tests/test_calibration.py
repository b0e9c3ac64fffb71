"""Temperature scaling: hand-checked values and recovery of a known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest

from pref_core.calibration import apply_temperature, fit_temperature
from pref_core.metrics import compute_log_loss


def test_apply_temperature_matches_hand_computed_values():
    probs = np.array([[0.5, 0.25, 0.25]])
    # T = 0.5 squares the probabilities before renormalising: [.25, .0625, .0625] / .375
    np.testing.assert_allclose(apply_temperature(probs, 0.5), [[2 / 3, 1 / 6, 1 / 6]], atol=1e-12)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-12)
    # A very high temperature flattens towards uniform; argmax never changes.
    assert np.allclose(apply_temperature(probs, 1e6), 1 / 3, atol=1e-5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_temperature(probs, 0.0)


def test_fit_temperature_recovers_overconfidence_and_never_hurts():
    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += 1.0
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    overconfident = apply_temperature(calibrated, 1 / 3)
    t = fit_temperature(labels, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    after = compute_log_loss(labels, apply_temperature(overconfident, t))
    assert after < compute_log_loss(labels, overconfident) - 0.3
    assert after == pytest.approx(compute_log_loss(labels, calibrated), abs=0.01)
    # Already calibrated: T stays near 1 and the loss does not get worse.
    t1 = fit_temperature(labels, calibrated)
    assert t1 == pytest.approx(1.0, abs=0.1)
    assert compute_log_loss(labels, apply_temperature(calibrated, t1)) <= compute_log_loss(labels, calibrated) + 1e-9
    assert (apply_temperature(overconfident, t).argmax(1) == overconfident.argmax(1)).all()
