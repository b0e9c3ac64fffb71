"""Metrics against hand-computed values and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sklearn_log_loss

from pref_core.evaluate.metrics import (
    compute_accuracy,
    compute_log_loss,
    compute_prior_log_loss,
    count_classes,
    summarize_predictions,
)


def test_log_loss_by_hand():
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]
    assert compute_log_loss([0, 1], probs) == pytest.approx(-(math.log(0.7) + math.log(0.8)) / 2)


def test_log_loss_accepts_one_hot_labels():
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]
    assert compute_log_loss([[1, 0, 0], [0, 1, 0]], probs) == compute_log_loss([0, 1], probs)


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=500)
    labels = rng.integers(0, 3, size=500)
    expected = sklearn_log_loss(labels, probs, labels=[0, 1, 2])
    assert compute_log_loss(labels, probs) == pytest.approx(expected, rel=1e-9)


def test_log_loss_clips_and_renormalizes():
    # p = 0 for the true class: clipped to eps, then the row is renormalized (1 + 2 eps).
    eps = 1e-15
    value = compute_log_loss([2], [[1.0, 0.0, 0.0]], eps=eps)
    assert value == pytest.approx(-math.log(eps / (1 - eps + 2 * eps)))
    # Rows not summing to 1 are renormalized after clipping: [.4, .2, .2] means [.5, .25, .25].
    assert compute_log_loss([0], [[0.4, 0.2, 0.2]]) == pytest.approx(-math.log(0.5))


def test_prior_log_loss_by_hand():
    labels = [0, 0, 1, 2]  # shares .5 / .25 / .25
    expected = -(2 * math.log(0.5) + 2 * math.log(0.25)) / 4
    assert compute_prior_log_loss(labels) == pytest.approx(expected)
    # Prior taken from other (training) labels: shares 1/3 each -> ln 3 whatever the labels.
    assert compute_prior_log_loss(labels, prior_labels=[0, 1, 2]) == pytest.approx(math.log(3))


def test_accuracy_and_counts():
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]]
    assert compute_accuracy([0, 1, 2], probs) == pytest.approx(2 / 3)
    assert count_classes([0, 0, 2]) == {"winner_model_a": 2, "winner_model_b": 0, "winner_tie": 1}


def test_summarize_predictions():
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]
    summary = summarize_predictions([0, 1], probs)
    assert summary == {
        "log_loss": pytest.approx(-(math.log(0.7) + math.log(0.8)) / 2),
        "accuracy": 1.0,
        "prior_log_loss": pytest.approx(-math.log(0.5)),  # shares .5/.5/0 -> -ln .5 per row
        "n": 2,
    }


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        ([0, 3], [[1, 0, 0], [0, 1, 0]], "integers in 0..2"),
        ([0.0, 1.0], [[1, 0, 0], [0, 1, 0]], "integers in 0..2"),
        ([0], [[0.5, 0.5]], r"shape \(1, 3\)"),
        ([0, 1], [[0.5, 0.5, 0.0]], r"shape \(2, 3\)"),
        ([0], [[np.nan, 0.5, 0.5]], "NaN"),
        ([[1, 1, 0]], [[0.5, 0.5, 0.0]], "one-hot"),
        ([], np.zeros((0, 3)), "zero rows"),
    ],
)
def test_bad_inputs_are_named(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        compute_log_loss(labels, probs)
