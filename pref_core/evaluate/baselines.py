"""Reference points for an LM's OOF log loss on the same folds: the class prior and TF-IDF + logistic regression.

A fine-tuned LM that does not beat a bag-of-words model on its own folds has learned surface
features (lengths, words) at best; both baselines are fit on each fold's training rows only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pref_core.data.labels import NUM_CLASSES, TURN_COLUMNS


def _texts(frame: pd.DataFrame, column: str) -> list[str]:
    return [" ".join(t for t in turns if t) for turns in frame[column]]


def prior_oof(frame: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Each validation row gets its fold's training class frequencies: (id, probs (3,)) per row, as a frame."""
    return _per_fold(frame, folds, lambda train, val: np.tile(_prior(train["label"].to_numpy()), (len(val), 1)))


def tfidf_logreg_oof(frame: pd.DataFrame, folds: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Out-of-fold probabilities of a TF-IDF + multinomial logistic regression over (prompt, a - b, a + b)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def fit_predict(train: pd.DataFrame, val: pd.DataFrame) -> np.ndarray:
        vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=20000, ngram_range=(1, 2))
        vectorizer.fit([text for column in TURN_COLUMNS for text in _texts(train, column)])

        def features(part: pd.DataFrame):
            p, a, b = (vectorizer.transform(_texts(part, c)) for c in TURN_COLUMNS)
            lengths = np.log1p([[len(x), len(y)] for x, y in zip(*(_texts(part, c) for c in TURN_COLUMNS[1:]))])
            extra = sparse.csr_matrix(np.c_[lengths[:, 0] - lengths[:, 1], lengths.sum(axis=1)])
            return sparse.hstack([p, a - b, a + b, extra]).tocsr()  # (rows, 3 * vocab + 2)

        labels = train["label"].to_numpy()
        if len(np.unique(labels)) < 2:
            return np.tile(_prior(labels), (len(val), 1))
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(features(train), labels)
        out = np.zeros((len(val), NUM_CLASSES))
        out[:, model.classes_] = model.predict_proba(features(val))  # classes absent from training get 0
        return out

    return _per_fold(frame, folds, fit_predict)


def _prior(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=NUM_CLASSES) / max(len(labels), 1)


def _per_fold(frame: pd.DataFrame, folds: pd.DataFrame, fit_predict) -> pd.DataFrame:
    fold_of = dict(zip(folds["id"].astype(str), folds["fold"]))
    fold = frame["id"].astype(str).map(fold_of).to_numpy()
    pieces = []
    for k in sorted(set(folds["fold"])):
        train, val = frame[fold != k], frame[fold == k]
        probs = fit_predict(train, val)  # (len(val), 3)
        pieces.append(
            pd.DataFrame(
                {
                    "id": val["id"].astype(str).to_numpy(),
                    "fold": k,
                    "label": val["label"].to_numpy(),
                    "probs": list(probs),
                }
            )
        )
    return pd.concat(pieces, ignore_index=True)
