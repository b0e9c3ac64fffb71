"""Paired comparison of two models' per-row log losses (pref_core.evaluate.compare), against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from pref_core.evaluate.compare import paired_difference
from pref_core.evaluate.metrics import compute_log_loss, row_log_losses


def test_row_log_losses_are_the_terms_of_the_log_loss():
    labels = np.array([0, 2])
    probs = np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(row_log_losses(labels, probs), [np.log(2), -np.log(0.6)])
    assert compute_log_loss(labels, probs) == pytest.approx((np.log(2) - np.log(0.6)) / 2)


def test_a_constant_difference_has_no_spread():
    result = paired_difference([1.0, 0.8, 0.6], [0.9, 0.7, 0.5])
    assert result.n_rows == 3
    assert result.mean == pytest.approx(-0.1)
    assert result.low == pytest.approx(-0.1) and result.high == pytest.approx(-0.1)
    assert result.share_b_better == 1.0


def test_two_rows_resample_to_three_possible_means():
    """Differences [-0.5, 0.0]: a resample of 2 rows draws (-0.5,-0.5) with p 1/4 -> -0.5, a mixed pair with p 1/2
    -> -0.25, (0,0) with p 1/4 -> 0. So the 95% interval is [-0.5, 0.0] and B is lower in ~75% of resamples."""
    result = paired_difference([1.0, 0.5], [0.5, 0.5], n_boot=20_000, seed=1)
    assert result.mean == pytest.approx(-0.25)
    assert (result.low, result.high) == (pytest.approx(-0.5), pytest.approx(0.0))
    assert result.share_b_better == pytest.approx(0.75, abs=0.01)


def test_the_interval_matches_a_plain_bootstrap_loop():
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, 0.5, 200), rng.gamma(2.0, 0.45, 200)
    result = paired_difference(a, b, n_boot=500, seed=7)
    draws = np.random.default_rng(7).integers(0, 200, size=(500, 200))
    means = np.array([(b - a)[row].mean() for row in draws])
    assert (result.low, result.high) == (
        pytest.approx(np.quantile(means, 0.025)),
        pytest.approx(np.quantile(means, 0.975)),
    )
    assert result.low <= result.mean <= result.high


def test_identical_models_differ_by_zero_and_the_words_say_it():
    result = paired_difference([0.3, 0.9], [0.3, 0.9])
    assert (result.mean, result.low, result.high, result.share_b_better) == (0.0, 0.0, 0.0, 0.0)
    assert result.in_words("lr=1e-4", "lr=2e-3").startswith("lr=2e-3 - lr=1e-4: +0.0000 log loss over 2 rows")


@pytest.mark.parametrize("a, b, match", [([], [], "no rows in common"), ([1.0], [1.0, 2.0], "one length")])
def test_unpaired_inputs_are_refused(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b)
