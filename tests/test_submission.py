"""The submission (pref_core.predict.submission): averaging, prior fill and the checks, on hand-built tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.predict.submission import (
    average_fold_predictions,
    class_prior,
    fill_missing_with_prior,
    validate_submission,
)


def _frame(ids, probs):
    frame = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    frame.insert(0, "id", ids)
    return frame


def test_folds_are_aligned_on_id_and_averaged_in_test_order():
    one = _frame(["1", "2"], [[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]])
    two = _frame(["2", "1"], [[0.2, 0.4, 0.4], [0.2, 0.6, 0.2]])  # other row order
    out = average_fold_predictions([one, two], [2, 1])
    assert out["id"].tolist() == ["2", "1"]
    np.testing.assert_allclose(out[list(LABEL_COLUMNS)].to_numpy(), [[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
    validate_submission(out, ["2", "1"])


def test_class_prior_is_the_share_of_each_class():
    np.testing.assert_allclose(class_prior(np.array([0, 0, 2, 1, 0, 2])), [0.5, 1 / 6, 1 / 3])


def test_rejected_rows_get_the_prior_in_file_order():
    predicted = _frame(["a", "c"], [[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    full, filled = fill_missing_with_prior(predicted, ["c", "b", "a"], np.array([0.5, 0.25, 0.25]))
    assert filled == ["b"]
    assert full["id"].tolist() == ["c", "b", "a"]
    np.testing.assert_allclose(
        full[list(LABEL_COLUMNS)].to_numpy(), [[0.1, 0.2, 0.7], [0.5, 0.25, 0.25], [0.7, 0.2, 0.1]]
    )
    validate_submission(full, ["c", "b", "a"])


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda f: f.rename(columns={"winner_tie": "tie"}), "columns are"),
        (lambda f: f.iloc[::-1], "ids differ"),
        (lambda f: f.assign(winner_tie=np.nan), "2 rows hold NaN"),
        (lambda f: f.assign(winner_model_a=-0.1, winner_model_b=0.9), "outside"),
        (lambda f: f.assign(winner_tie=0.5), "do not sum to 1"),
    ],
)
def test_a_bad_submission_is_refused_with_what_is_wrong(change, problem):
    good = _frame(["a", "b"], [[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    with pytest.raises(ValueError, match=f"invalid submission: .*{problem}"):
        validate_submission(change(good), ["a", "b"])


def test_test_file_ids_keeps_file_order_once_each_with_a_bom_and_unreadable_rows(tmp_path):
    from pref_core.predict.submission import test_file_ids

    path = tmp_path / "test.csv"
    # A byte-order mark before the header, an id repeated, and a row whose cells no parser would accept.
    path.write_bytes(
        '\ufeffid,prompt,response_a,response_b\n007,"[""a""]","[""b""]","[""c""]"\n'
        '3,"[""cut","x","y"\n007,"[""a""]","[""b""]","[""c""]"\n'.encode("utf-8")
    )
    assert test_file_ids(path) == ["007", "3"]
