"""Temperature scaling: hand-checked values and recovery of a known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest

from pref_core.evaluate.calibration import apply_temperature, fit_temperature
from pref_core.evaluate.metrics import compute_log_loss


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


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample(rng, n):
    """Rows whose true class probabilities are softmax(z), and labels drawn from them."""
    z = rng.normal(size=(n, 3))
    labels = (rng.random(n)[:, None] > _softmax(z).cumsum(axis=1)).sum(axis=1)
    return z, labels


def test_temperature_applies_to_each_fold_model_before_averaging():
    """K fold models, each overconfident (logits x1.5) with its own noise: the temperature fit on OOF
    rows (one model each) helps there; applied to each model before the mean it does not hurt the test
    average, while applied to the mean (already less confident than any one model) it would."""
    import pandas as pd

    from pref_core.data.labels import LABEL_COLUMNS
    from pref_core.predict.ensemble import average_probabilities
    from pref_core.predict.submission import average_fold_predictions

    rng = np.random.default_rng(0)
    k, n, noise, scale = 5, 4000, 0.75, 1.5
    z, labels = _sample(rng, n)
    fold = rng.integers(0, k, n)
    oof = np.stack([_softmax((z + rng.normal(size=(n, 3)) * noise) * scale) for _ in range(k)])[fold, np.arange(n)]
    t = fit_temperature(labels, oof)
    assert compute_log_loss(labels, apply_temperature(oof, t)) < compute_log_loss(labels, oof) - 0.1  # the fit helps

    z_test, labels_test = _sample(rng, n)
    per_fold = [_softmax((z_test + rng.normal(size=(n, 3)) * noise) * scale) for _ in range(k)]
    uncalibrated = compute_log_loss(labels_test, average_probabilities(per_fold))
    ids = [str(i) for i in range(n)]
    frames = [pd.DataFrame(p, columns=list(LABEL_COLUMNS)).assign(id=ids) for p in per_fold]
    submission = average_fold_predictions(frames, ids, t)  # the flow's make-submission
    calibrated = compute_log_loss(labels_test, submission[list(LABEL_COLUMNS)].to_numpy())
    assert calibrated <= uncalibrated
    # The registered model's path (pref_core.predict.ensemble) gives the same numbers.
    np.testing.assert_allclose(
        average_probabilities(per_fold, t), submission[list(LABEL_COLUMNS)].to_numpy(), atol=1e-12
    )
    # Today's mismatch, for contrast: the temperature applied to the mean over-softens it.
    assert compute_log_loss(labels_test, apply_temperature(average_probabilities(per_fold), t)) > uncalibrated
