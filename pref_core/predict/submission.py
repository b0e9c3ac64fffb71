"""The Kaggle submission: fold test predictions averaged, rows ingest rejected filled, the file checked.

Pure pandas/numpy; the caller reads the fold tables and writes the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.predict.ensemble import average_probabilities

SUBMISSION_COLUMNS = ("id", *LABEL_COLUMNS)


def test_file_ids(test_csv: Union[str, Path]) -> list[str]:
    """Every distinct id of the test file, in file order, as written there: the rows Kaggle scores, including
    those ingest rejected."""
    ids = pd.read_csv(test_csv, dtype=str, keep_default_na=False, usecols=["id"], encoding="utf-8-sig")["id"]
    return list(dict.fromkeys(ids.tolist()))


def average_fold_predictions(
    frames: Sequence[pd.DataFrame], test_ids: Sequence[str], temperature: float = 1.0
) -> pd.DataFrame:
    """Mean of the folds' (n, 3) probabilities, each calibrated before the mean (where the OOF
    temperature was fit), aligned on id, in the test file's order."""
    ids = [str(i) for i in test_ids]
    probs = average_probabilities(
        [f.set_index(f["id"].astype(str)).loc[ids, list(LABEL_COLUMNS)].to_numpy() for f in frames], temperature
    )
    out = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    out.insert(0, "id", ids)
    return out


def class_prior(labels: np.ndarray) -> np.ndarray:
    """(3,) class shares of the training labels (class indices)."""
    labels = np.asarray(labels)
    return np.bincount(labels, minlength=len(LABEL_COLUMNS)) / len(labels)


def fill_missing_with_prior(
    submission: pd.DataFrame, all_ids: Sequence[str], prior: np.ndarray
) -> tuple[pd.DataFrame, list[str]]:
    """`submission` with one row per id of `all_ids`, in that order: ids it lacks (rows ingest rejected)
    get `prior`. Kaggle scores a submission only with one row per test id. Returns (full, filled ids)."""
    predicted = submission.assign(id=submission["id"].astype(str)).set_index("id")
    all_ids = [str(i) for i in all_ids]
    missing = [i for i in all_ids if i not in predicted.index]
    filler = pd.DataFrame([prior] * len(missing), columns=list(LABEL_COLUMNS), index=pd.Index(missing, name="id"))
    full = pd.concat([predicted, filler]).loc[all_ids].reset_index()
    return full, missing


def validate_submission(submission: pd.DataFrame, test_ids: Sequence[str]) -> None:
    """One row per test id in input order, probabilities in [0, 1] summing to 1, no NaN (ValueError)."""
    problems = []
    if list(submission.columns) != list(SUBMISSION_COLUMNS):
        problems.append(f"columns are {list(submission.columns)}, expected {list(SUBMISSION_COLUMNS)}")
    elif submission["id"].astype(str).tolist() != [str(i) for i in test_ids]:
        problems.append("ids differ from the test file's ids in input order")
    else:
        values = submission[list(LABEL_COLUMNS)].to_numpy(dtype=float)
        if np.isnan(values).any():
            problems.append(f"{int(np.isnan(values).any(axis=1).sum())} rows hold NaN")
        elif (values < 0).any() or (values > 1).any():
            problems.append("probabilities outside [0, 1]")
        elif not np.allclose(values.sum(axis=1), 1.0, atol=1e-6):
            problems.append("rows do not sum to 1 within 1e-6")
    if problems:
        raise ValueError("invalid submission: " + "; ".join(problems))
