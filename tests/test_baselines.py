"""Baselines on the same folds: the prior from each fold's training rows, TF-IDF + LR learning surface words."""

from __future__ import annotations

import numpy as np
import pytest

from pref_core.data.folds import make_folds
from pref_core.evaluate.baselines import prior_oof, tfidf_logreg_oof
from pref_core.evaluate.metrics import compute_log_loss


def test_prior_is_each_folds_training_frequencies(train_frame):
    folds = make_folds(train_frame, n_folds=3, seed=0)
    out = prior_oof(train_frame, folds)
    assert sorted(out["id"]) == sorted(train_frame["id"])
    row = out.iloc[0]
    train_labels = train_frame["label"][folds["fold"].to_numpy() != row["fold"]].to_numpy()
    np.testing.assert_allclose(row["probs"], np.bincount(train_labels, minlength=3) / len(train_labels))


def test_tfidf_learns_the_synthetic_marker_words(train_frame):
    """The synthetic rule marks the better answer by words, so a bag of words beats the prior clearly."""
    folds = make_folds(train_frame, n_folds=3, seed=0)
    prior, tfidf = prior_oof(train_frame, folds), tfidf_logreg_oof(train_frame, folds)
    assert (prior["id"] == tfidf["id"]).all()
    prior_loss = compute_log_loss(prior["label"].to_numpy(), np.stack(prior["probs"]))
    tfidf_loss = compute_log_loss(tfidf["label"].to_numpy(), np.stack(tfidf["probs"]))
    assert tfidf_loss < prior_loss - 0.05, (tfidf_loss, prior_loss)
    assert prior_loss == pytest.approx(np.log(3), abs=0.1)
