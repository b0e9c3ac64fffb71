"""Pseudo-labels fold by fold (pref_core.data.pseudo): the checks on unlabelled rows, the seeded selection, the
content hash and cache key, and the leak rule (fold k reads teacher fold k only, never its validation prompts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pref_core.data.folds import prompt_group_key
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.data.pseudo import (
    PseudoLabelError,
    check_unlabeled_columns,
    check_unlabeled_rows,
    pseudo_cache_key,
    pseudo_labels_frame,
    rows_content_hash,
    rows_for_fold,
    select_pseudo_rows,
)


def unlabeled(n=6):
    return pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(n)],
            "prompt": [[f"question {i % 3}"] for i in range(n)],
            "response_a": [[f"answer a{i}"] for i in range(n)],
            "response_b": [[f"answer b{i}"] for i in range(n)],
        }
    )


def test_unlabelled_rows_with_labels_are_refused_with_the_fix():
    check_unlabeled_columns(["id", "prompt", "response_a", "response_b"], "data.unlabeled_csvs[0]")
    with pytest.raises(
        PseudoLabelError,
        match=r"data.unlabeled_csvs\[0\]: unlabelled rows carry label column\(s\) "
        r"\['winner_model_a', 'winner_tie'\]; fix: put labelled rows in",
    ):
        check_unlabeled_columns(["id", "winner_model_a", "winner_tie"], "data.unlabeled_csvs[0]")


def test_empty_colliding_and_repeated_ids_are_refused():
    rows = unlabeled()
    check_unlabeled_rows(rows, "u.csv", taken_ids={"t1", "t2"})
    with pytest.raises(PseudoLabelError, match="u.csv: no unlabelled rows"):
        check_unlabeled_rows(rows.iloc[:0], "u.csv", taken_ids=set())
    with pytest.raises(PseudoLabelError, match=r"row id u2 \(2 ids in all\) is also a training row's id"):
        check_unlabeled_rows(rows, "u.csv", taken_ids={"u4", "u2", "t1"})
    with pytest.raises(PseudoLabelError, match="row id u0 appears more than once"):
        check_unlabeled_rows(pd.concat([rows, rows.iloc[:1]]), "u.csv", taken_ids=set())


def test_the_selection_is_seeded_ordered_and_the_same_for_every_call():
    rows = unlabeled(50)
    first, again = select_pseudo_rows(rows, 10, seed=3), select_pseudo_rows(rows, 10, seed=3)
    assert len(first) == 10 and first["id"].tolist() == again["id"].tolist()
    positions = [int(i[1:]) for i in first["id"]]
    assert positions == sorted(positions)  # original order kept
    assert first["id"].tolist() != select_pseudo_rows(rows, 10, seed=4)["id"].tolist()
    assert len(select_pseudo_rows(rows, None, seed=3)) == 50 and len(select_pseudo_rows(rows, 80, seed=3)) == 50


def test_the_cache_key_follows_the_content_of_teacher_fold_rows_and_inference():
    rows = unlabeled()
    rows_hash = rows_content_hash(rows)
    assert rows_content_hash(rows[["response_b", "id", "response_a", "prompt"]]) == rows_hash  # column order: same
    edited = rows.copy()
    edited.at[2, "response_a"] = ["answer a2 edited"]
    assert rows_content_hash(edited) != rows_hash
    key = pseudo_cache_key("run-1", 0, rows_hash, {"max_length": 512, "tta_swap": True})
    assert key == pseudo_cache_key("run-1", 0, rows_hash, {"tta_swap": True, "max_length": 512})
    assert (
        len(
            {
                key,
                pseudo_cache_key("run-1", 1, rows_hash, {"max_length": 512, "tta_swap": True}),
                pseudo_cache_key("run-2", 0, rows_hash, {"max_length": 512, "tta_swap": True}),
                pseudo_cache_key("run-1", 0, rows_content_hash(edited), {"max_length": 512, "tta_swap": True}),
                pseudo_cache_key("run-1", 0, rows_hash, {"max_length": 256, "tta_swap": True}),
            }
        )
        == 5
    )


def teacher_predictions(rows, fold):
    """A stand-in for teacher fold `fold`: each fold's model gives every row a different, recognisable row."""
    probs = np.tile(np.eye(3)[fold % 3] * 0.7 + 0.1, (len(rows), 1))
    return pseudo_labels_frame(rows["id"], probs, teacher_fold=fold)


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_fold_k_trains_on_teacher_fold_ks_soft_labels(fold):
    rows = unlabeled()
    used, counts = rows_for_fold(rows, teacher_predictions(rows, fold), fold, val_prompt_keys=set(), source="cache")
    expected = np.eye(3)[fold % 3] * 0.7 + 0.1
    np.testing.assert_allclose(used[list(LABEL_COLUMNS)].to_numpy(), np.tile(expected, (6, 1)))
    assert counts == {"n_pseudo_rows": 6, "n_pseudo_dropped_validation_prompt": 0}


def test_fold_k_refuses_another_folds_teacher():
    rows = unlabeled()
    with pytest.raises(
        PseudoLabelError,
        match=r"student fold 0 was handed pseudo-labels of teacher fold\(s\) \[1\]; "
        r"fold 0 may only read teacher fold 0",
    ):
        rows_for_fold(rows, teacher_predictions(rows, 1), 0, val_prompt_keys=set(), source="cache")
    mixed = pd.concat([teacher_predictions(rows, 0).iloc[:3], teacher_predictions(rows, 2).iloc[3:]])
    with pytest.raises(PseudoLabelError, match=r"teacher fold\(s\) \[2\]"):
        rows_for_fold(rows, mixed, 0, val_prompt_keys=set(), source="cache")


def test_pseudo_labels_must_cover_the_rows_one_to_one():
    rows = unlabeled()
    with pytest.raises(PseudoLabelError, match="first missing id u5"):
        rows_for_fold(rows, teacher_predictions(rows.iloc[:5], 0), 0, val_prompt_keys=set(), source="cache")


def test_rows_on_a_validation_prompt_of_the_fold_are_dropped_and_counted():
    rows = unlabeled()  # prompts: question 0, 1, 2, 0, 1, 2
    val_keys = {prompt_group_key(["Question 1 "])}  # the fold's validation prompt, spelled differently
    used, counts = rows_for_fold(rows, teacher_predictions(rows, 0), 0, val_keys, source="cache")
    assert used["id"].tolist() == ["u0", "u2", "u3", "u5"]
    assert counts == {"n_pseudo_rows": 4, "n_pseudo_dropped_validation_prompt": 2}


def test_pseudo_labels_are_probabilities():
    frame = pseudo_labels_frame(["a"], [[2.0, 1.0, 1.0]], teacher_fold=0)
    np.testing.assert_allclose(frame[list(LABEL_COLUMNS)].to_numpy(), [[0.5, 0.25, 0.25]])
    with pytest.raises(PseudoLabelError, match="one softmax row per unlabelled row"):
        pseudo_labels_frame(["a", "b"], [[0.5, 0.25, 0.25]], teacher_fold=0)
