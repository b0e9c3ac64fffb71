"""Synthetic data: Kaggle format, realistic shape, a rule that holds for about `signal` of the rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pref_core.data.arena import read_arena_csv
from pref_core.data.folds import prompt_group_key
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.data.synthetic import MARKER_WORD, make_synthetic_frames, shuffle_labels, write_synthetic_csvs


def rule_labels(frame) -> np.ndarray:
    """The generating rule: marker only in a -> 0, only in b -> 1, both or neither -> tie."""

    def marked(cell):
        return any(t is not None and MARKER_WORD in t for t in json.loads(cell))

    a = frame["response_a"].map(marked).to_numpy()
    b = frame["response_b"].map(marked).to_numpy()
    return np.where(a & ~b, 0, np.where(b & ~a, 1, 2))


def labels_of(frame) -> np.ndarray:
    return frame[list(LABEL_COLUMNS)].to_numpy().argmax(axis=1)


def test_kaggle_format(synthetic_frames):
    train, test = synthetic_frames
    assert list(train.columns) == ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *LABEL_COLUMNS]
    assert list(test.columns) == ["id", "prompt", "response_a", "response_b"]
    assert (train[list(LABEL_COLUMNS)].sum(axis=1) == 1).all()
    assert train["id"].is_unique and not set(train["id"]) & set(test["id"])
    assert all(isinstance(json.loads(cell), list) for cell in train["prompt"])
    assert (train["model_a"] != train["model_b"]).all()


def test_deterministic_for_a_seed():
    first, _ = make_synthetic_frames(n_train=50, n_test=5, seed=3)
    assert first.equals(make_synthetic_frames(n_train=50, n_test=5, seed=3)[0])
    assert not first.equals(make_synthetic_frames(n_train=50, n_test=5, seed=4)[0])


def test_realistic_shape():
    train, _ = make_synthetic_frames(n_train=2000, n_test=0, seed=1)
    turns = train["prompt"].map(lambda c: len(json.loads(c)))
    assert 0.11 < (turns > 1).mean() < 0.19  # ~15% multi-turn
    cells = train["response_a"].tolist() + train["response_b"].tolist()
    assert any(None in json.loads(c) for c in cells)  # some JSON-null turns
    keys = train["prompt"].map(prompt_group_key)
    assert keys.duplicated().mean() > 0.3  # prompts repeat across rows
    shares = np.bincount(labels_of(train), minlength=3) / len(train)
    assert np.all(np.abs(shares - 1 / 3) < 0.05)
    chars = train["prompt"].str.len() + train["response_a"].str.len() + train["response_b"].str.len()
    assert chars.median() < 1000 and chars.max() > 3 * chars.median()  # short-ish, with a long tail
    assert train["response_a"].str.contains("é|ï|ü|\U0001f600").any()  # some non-ASCII text


@pytest.mark.parametrize("signal", [1.0, 0.9, 0.0])
def test_signal_is_the_share_that_follows_the_rule(signal):
    train, _ = make_synthetic_frames(n_train=3000, n_test=0, signal=signal, seed=2)
    agreement = (rule_labels(train) == labels_of(train)).mean()
    expected = signal + (1 - signal) / 3  # off-rule rows agree by chance a third of the time
    assert abs(agreement - expected) < 0.03


def test_shuffle_labels_breaks_the_rule_but_keeps_counts(synthetic_frames):
    train, _ = synthetic_frames
    shuffled = shuffle_labels(train, seed=0)
    assert (shuffled[list(LABEL_COLUMNS)].sum(axis=1) == 1).all()
    assert (np.bincount(labels_of(shuffled)) == np.bincount(labels_of(train))).all()
    assert shuffled.drop(columns=list(LABEL_COLUMNS)).equals(train.drop(columns=list(LABEL_COLUMNS)))
    assert (rule_labels(shuffled) == labels_of(shuffled)).mean() < 0.5
    assert shuffle_labels(train, seed=0).equals(shuffled)


def test_write_synthetic_csvs_ingest_cleanly(tmp_path):
    train_path, test_path = write_synthetic_csvs(tmp_path / "data", n_train=80, n_test=20, seed=5)
    assert (train_path.name, test_path.name) == ("train.csv", "test.csv")
    train = read_arena_csv(train_path, "train")
    assert (train.n_kept, train.n_rejected) == (80, 0)
    assert read_arena_csv(test_path, "test").n_kept == 20
    expected, _ = make_synthetic_frames(n_train=80, n_test=20, seed=5)
    assert train.frame["id"].tolist() == expected["id"].tolist()


def test_bad_arguments():
    with pytest.raises(ValueError, match="signal"):
        make_synthetic_frames(n_train=10, signal=1.5)
