"""Folds: grouped by prompt (no prompt in two folds), stratified by label, deterministic."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pref_core.data.folds import load_folds, make_folds, prompt_group_key, save_folds


def test_prompt_group_key_is_canonical():
    assert prompt_group_key(["a", None]) == prompt_group_key('[ "a" ,  null ]') == '["a",null]'
    assert prompt_group_key(["a"]) != prompt_group_key(["a", "b"])


def test_prompts_equal_up_to_case_and_whitespace_share_a_fold():
    base = ["What is a Zebra?", "And a horse?"]
    variants = [base, ["what is a zebra?", "and a HORSE?"], ["  What  is a\nZebra? ", "And a horse?\t"]]
    assert len({prompt_group_key(v) for v in variants}) == 1
    assert prompt_group_key(["what is a zebra"]) != prompt_group_key(["what is a zebra?"])  # words still count
    rows = []
    for group in range(20):
        for k, variant in enumerate(variants):  # each prompt written three ways
            rows.append(
                {"id": f"{group}-{k}", "prompt": [f"{group} {variant[0]}", *variant[1:]], "label": (group + k) % 3}
            )
    frame = pd.DataFrame(rows)
    folds = make_folds(frame, n_folds=5, seed=0)
    assert (folds.groupby(folds["id"].str.split("-").str[0])["fold"].nunique() == 1).all()


def test_no_prompt_in_two_folds_and_every_id_once(train_frame):
    folds = make_folds(train_frame, n_folds=5, seed=42)
    assert list(folds.columns) == ["id", "fold"]
    assert folds["id"].tolist() == train_frame["id"].tolist()  # each id once, in the frame's order
    assert set(folds["fold"]) == {0, 1, 2, 3, 4}
    keys = train_frame["prompt"].map(prompt_group_key)
    assert keys.duplicated().any(), "the fixture should repeat prompts, or this test proves nothing"
    folds_per_prompt = pd.Series(folds["fold"].to_numpy()).groupby(keys.to_numpy()).nunique()
    assert (folds_per_prompt == 1).all()


def test_folds_are_deterministic_for_a_seed(train_frame):
    first = make_folds(train_frame, n_folds=5, seed=7)
    assert first.equals(make_folds(train_frame, n_folds=5, seed=7))
    assert not first["fold"].equals(make_folds(train_frame, n_folds=5, seed=8)["fold"])


def test_folds_are_roughly_stratified(train_frame):
    folds = make_folds(train_frame, n_folds=3, seed=0)
    overall = np.bincount(train_frame["label"], minlength=3) / len(train_frame)
    for k in range(3):
        labels = train_frame["label"][folds["fold"].to_numpy() == k]
        shares = np.bincount(labels, minlength=3) / len(labels)
        assert np.abs(shares - overall).max() < 0.08, (k, shares, overall)
        assert abs(len(labels) - len(train_frame) / 3) < 0.1 * len(train_frame)


def test_raw_json_prompt_cells_group_like_parsed_ones():
    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(8)],
            "prompt": [json.dumps([f"q{i % 4}"]) for i in range(8)],
            "label": [0, 1, 2, 0, 1, 2, 0, 1],
        }
    )
    folds = make_folds(frame, n_folds=2, seed=0)
    for i in range(4):
        assert folds["fold"][i] == folds["fold"][i + 4]


def test_too_few_prompts_and_missing_columns(train_frame):
    frame = train_frame.iloc[:6].copy()
    frame["prompt"] = [["same"]] * 6
    with pytest.raises(ValueError, match="only 1 distinct prompts; lower cv.n_folds"):
        make_folds(frame, n_folds=2, seed=0)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
        make_folds(train_frame.drop(columns=["label"]), n_folds=2, seed=0)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_save_load_roundtrip(tmp_path, suffix):
    folds = pd.DataFrame({"id": ["007", "NA", "12"], "fold": [0, 1, 0]})
    path = save_folds(folds, tmp_path / f"folds{suffix}")
    back = load_folds(path)
    assert back["id"].tolist() == ["007", "NA", "12"]
    assert back["fold"].tolist() == [0, 1, 0] and back["fold"].dtype == "int64"


def test_save_folds_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=".parquet or .csv"):
        save_folds(pd.DataFrame({"id": ["1"], "fold": [0]}), tmp_path / "folds.txt")
    with pytest.raises(FileNotFoundError, match="folds file"):
        load_folds(tmp_path / "missing.csv")


def test_frame_read_back_from_parquet_gives_the_same_folds(train_frame, tmp_path):
    train_frame.to_parquet(tmp_path / "frame.parquet")
    back = pd.read_parquet(tmp_path / "frame.parquet")
    assert make_folds(back, n_folds=5, seed=1).equals(make_folds(train_frame, n_folds=5, seed=1))
