"""OOF assembly and scoring (pref_core.evaluate.oof), on hand-built tables: no Prefect, no MLflow."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.evaluate.oof import OOF_COLUMNS, IncompleteOOFError, assemble_oof, oof_figures, score_oof, text_lengths


def _predictions(ids, probs, echoed_label=None):
    frame = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    frame.insert(0, "id", ids)
    if echoed_label is not None:
        frame["label"] = echoed_label
    return frame


FOLDS = pd.DataFrame({"id": ["a", "b", "c", "d"], "fold": [0, 0, 1, 1]})
LABELS = pd.DataFrame({"id": ["a", "b", "c", "d"], "label": [0, 1, 2, 0]})


def _two_folds():
    return {
        1: _predictions(["c", "d"], [[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]]),
        0: _predictions(["a", "b"], [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]], echoed_label=[2, 2]),
    }


def test_assembled_table_takes_labels_from_ingest_not_from_the_folds():
    oof = assemble_oof(_two_folds(), LABELS, FOLDS)
    assert tuple(oof.columns) == OOF_COLUMNS
    assert oof["id"].tolist() == ["a", "b", "c", "d"]  # folds in order
    assert oof["fold"].tolist() == [0, 0, 1, 1]
    assert oof["label"].tolist() == [0, 1, 2, 0]  # fold 0 echoed 2, 2: ignored


def test_ids_are_compared_as_text():
    labels = LABELS.assign(id=[1, 2, 3, 4])
    folds = FOLDS.assign(id=[1, 2, 3, 4])
    predictions = {0: _predictions([1, 2], [[1 / 3] * 3] * 2), 1: _predictions(["3", "4"], [[1 / 3] * 3] * 2)}
    assert assemble_oof(predictions, labels, folds)["label"].tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize(
    "fold_0_ids, problem",
    [
        (["a", "a"], "1 duplicated"),
        (["a"], "1 missing (e.g. ['b'])"),
        (["a", "b", "z"], "1 unexpected"),
        (["a", "c"], "1 duplicated"),  # c is fold 1's row too
    ],
)
def test_coverage_is_each_validation_row_exactly_once(fold_0_ids, problem):
    predictions = {0: _predictions(fold_0_ids, [[1 / 3] * 3] * len(fold_0_ids)), 1: _two_folds()[1]}
    with pytest.raises(IncompleteOOFError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        assemble_oof(predictions, LABELS, FOLDS)


def test_only_the_trained_folds_must_be_covered():
    oof = assemble_oof({1: _two_folds()[1]}, LABELS, FOLDS)
    assert oof["id"].tolist() == ["c", "d"]


def test_scores_match_hand_computed_values():
    oof = assemble_oof(_two_folds(), LABELS, FOLDS)
    scores = score_oof(oof, "none")
    # p[label] = 0.5, 0.5, 0.5, 0.5 -> log loss ln 2; argmax right on every row.
    assert scores.metrics["oof_log_loss"] == pytest.approx(math.log(2))
    assert scores.metrics["oof_accuracy"] == 1.0
    # Class shares 2/4, 1/4, 1/4: prior log loss = -(2 ln .5 + ln .25 + ln .25) / 4.
    assert scores.metrics["prior_log_loss"] == pytest.approx(-(2 * math.log(0.5) + 2 * math.log(0.25)) / 4)
    # Scores are metrics; what they were computed on is bookkeeping (params).
    assert set(scores.metrics) == {"oof_log_loss", "oof_accuracy", "prior_log_loss"}
    assert scores.params == {"n_oof": 4}
    assert scores.temperature == 1.0 and "temperature" not in scores.params
    assert scores.fold_rows == {0: 2, 1: 2} and scores.fold_accuracy == {0: 1.0, 1: 1.0}
    assert scores.fold_log_loss == {0: pytest.approx(math.log(2)), 1: pytest.approx(math.log(2))}


def test_temperature_is_applied_only_when_asked_and_never_hurts():
    oof = assemble_oof(_two_folds(), LABELS, FOLDS)
    plain, calibrated = score_oof(oof, "none"), score_oof(oof, "temperature")
    # Every row right but at p=0.5: sharpening (T < 1) lowers the loss.
    assert calibrated.temperature < 1.0
    assert calibrated.metrics["oof_log_loss_calibrated"] < calibrated.metrics["oof_log_loss"]
    assert calibrated.params["temperature"] == calibrated.temperature
    assert plain.fitted_temperature == pytest.approx(calibrated.temperature)


def test_text_lengths_follow_the_requested_order():
    frame = pd.DataFrame(
        {
            "id": ["x", "y"],
            "prompt": [["ab"], ["a", None]],
            "response_a": [["c"], ["bb"]],
            "response_b": [["dd", "e"], ["c"]],
        }
    )
    assert text_lengths(frame, pd.Series(["y", "x"])).tolist() == [4, 6]


def test_figures_are_the_five_named_plots():
    oof = assemble_oof(_two_folds(), LABELS, FOLDS)
    parsed = pd.DataFrame(
        {"id": list("abcd"), "prompt": [["p"]] * 4, "response_a": [["r"]] * 4, "response_b": [["s"]] * 4}
    )
    figures = oof_figures(oof, score_oof(oof, "none"), {0: 0.69, 1: 0.69}, text_lengths(parsed, oof["id"]))
    assert sorted(figures) == [
        "plots/calibration_temperature.png",
        "plots/confusion_matrix.png",
        "plots/fold_log_loss.png",
        "plots/log_loss_by_length.png",
        "plots/reliability.png",
    ]
    assert all(hasattr(f, "savefig") for f in figures.values())
    np.testing.assert_array_equal(oof["label"], [0, 1, 2, 0])
