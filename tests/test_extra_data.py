"""Extra training data: HH-RLHF pair conversion, deduplication, and extra rows only in training folds."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from pref_core.data.arena import DataValidationError, read_arena_csv
from pref_core.data.extra import combine_extra, pair_to_arena, read_pairs, split_transcript, write_arena_csv

ROOT = Path(__file__).resolve().parents[1]
HH_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf_harmless_pairs_dev.jsonl.gz"


def _transcript(*turns: str) -> str:
    speakers = ["Human", "Assistant"] * len(turns)
    return "".join(f"\n\n{s}: {t}" for s, t in zip(speakers, turns))


def test_pair_to_arena_puts_the_shared_dialogue_in_the_prompt_and_last_answers_in_responses():
    chosen = _transcript("hi", "hello!", "how are you?", "fine, thanks")
    rejected = _transcript("hi", "hello!", "how are you?", "go away")
    row = pair_to_arena(chosen, rejected, chosen_on_a=False)
    assert json.loads(row["prompt"]) == ["hi", "how are you?"]
    assert json.loads(row["response_a"]) == ["hello!", "go away"]
    assert json.loads(row["response_b"]) == ["hello!", "fine, thanks"]
    assert (row["winner_model_a"], row["winner_model_b"], row["winner_tie"]) == (0, 1, 0)
    assert pair_to_arena(chosen, rejected, chosen_on_a=True)["winner_model_a"] == 1


def test_pair_conversion_rejects_pairs_that_differ_earlier():
    with pytest.raises(ValueError, match="share every turn"):
        pair_to_arena(_transcript("hi", "a"), _transcript("hello", "b"), True)
    with pytest.raises(ValueError, match="not a transcript"):
        split_transcript("no speaker tags")


def test_read_pairs_reports_bad_lines_by_line_number(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    lines = [
        json.dumps({"chosen": _transcript(f"q{i}", "good"), "rejected": _transcript(f"q{i}", "bad")}) for i in range(8)
    ]
    lines[3] = "{not json"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError) as excinfo:
        read_pairs(path)
    assert "pairs:4" in str(excinfo.value)
    result = read_pairs(path, seed=1, max_bad_fraction=0.2)
    assert (result.n_read, result.n_kept, result.n_rejected) == (8, 7, 1)
    assert set(result.frame["label"]) <= {0, 1}  # chosen on a or b, never a tie
    # Seeded: the same file and seed put each chosen answer on the same side.
    again = read_pairs(path, seed=1, max_bad_fraction=0.2)
    assert again.frame["label"].tolist() == result.frame["label"].tolist()


@pytest.mark.skipif(not HH_DEV.exists(), reason="shared HH-RLHF sample not present")
def test_real_hh_rlhf_pairs_convert():
    result = read_pairs(HH_DEV, seed=0, max_bad_fraction=0.05)
    assert result.n_read == 1156
    assert result.n_kept + result.n_rejected == 1156 and result.n_kept > 1100
    assert result.rejected["id"].str.startswith("hh_rlhf_harmless_pairs_dev:").all()
    shares = result.frame["label"].value_counts(normalize=True)
    assert set(shares.index) == {0, 1} and 0.4 < shares[0] < 0.6


def test_extra_rows_are_deduplicated_against_the_main_prompts(train_frame):
    main = train_frame.head(20)
    extra = train_frame.iloc[10:30].copy()  # 10 prompts shared with main
    kept, counts = combine_extra([("more", extra)], main)
    main_prompts = set(map(tuple, main["prompt"]))
    assert not any(tuple(p) in main_prompts for p in kept["prompt"])
    assert counts["n_extra_duplicates_dropped"] >= 10
    assert kept["id"].str.startswith("extra:more:").all()


def test_extra_rows_sharing_a_prompt_among_themselves_all_stay(train_frame):
    """Other responses to the same question are distinct pairs; only the main data's prompts are dropped."""
    main = train_frame.head(5)
    extra = train_frame.iloc[100:110].copy()
    same_prompt = extra.assign(
        id=lambda f: "again-" + f["id"], response_a=extra["response_b"], response_b=extra["response_a"]
    )
    near_main = main.assign(id=lambda f: "near-" + f["id"], prompt=[[t.upper() for t in p] for p in main["prompt"]])
    kept, counts = combine_extra([("more", pd.concat([extra, same_prompt, near_main]))], main)
    assert len(kept) == 20 and counts["n_extra_duplicates_dropped"] == 5  # the main prompts in upper case go
    assert not kept["id"].str.contains("near-").any()


def test_extra_sources_are_read_in_order_with_their_rejected_rows_and_counts(tmp_path, train_frame):
    from pref_core.data.extra import read_extra_sources

    main = train_frame.iloc[2:4]
    main_prompts = set(map(tuple, main["prompt"]))
    others = train_frame[[tuple(p) not in main_prompts for p in train_frame["prompt"]]].head(3)
    csv = write_arena_csv(pd.concat([main, others]), tmp_path / "more.csv")
    pairs = tmp_path / "pairs.jsonl.gz"
    lines = [
        json.dumps({"chosen": _transcript(f"q{i}", "good"), "rejected": _transcript(f"q{i}", "bad")}) for i in range(4)
    ]
    lines[1] = "{not json"
    with gzip.open(pairs, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    result, counts = read_extra_sources([csv], [pairs], main, seed=0, max_bad_fraction=0.5)
    # 5 arena rows (2 share a main prompt) + 4 pair lines (1 unreadable): 9 read, 6 kept.
    assert (result.n_read, result.n_kept, result.n_rejected) == (9, 6, 3)
    assert counts == {"n_extra_more-0": 5, "n_extra_pairs-1": 3, "n_extra_duplicates_dropped": 2, "n_extra_kept": 6}
    assert result.frame["id"].str.startswith("extra:more-0:").sum() == 3
    assert result.frame["id"].str.startswith("extra:pairs-1:").sum() == 3
    assert result.rejected["source"].tolist() == [str(pairs)]


@pytest.mark.slow
def test_extra_rows_train_every_fold_and_never_validate(prefect_harness, tmp_path, synthetic_csvs):
    from arena_pref.flows.cv_training import cv_training
    from mlflow import MlflowClient
    from pref_core.config.loading import load_config

    main = read_arena_csv(synthetic_csvs[0], "train").frame
    extra_csv = write_arena_csv(main.head(40).assign(id=lambda f: "x" + f["id"]), tmp_path / "extra.csv")  # duplicates
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps(
                {
                    "chosen": _transcript(f"new question {i}", "zebra zebra"),
                    "rejected": _transcript(f"new question {i}", "plain"),
                }
            )
            for i in range(30)
        )
    )
    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.train_csv={synthetic_csvs[0]}",
            f"data.extra_csvs=[{extra_csv}]",
            f"data.extra_pairs=[{pairs}]",
            f"output_dir={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "cv.execution=in_process",
            "cv.folds=[0, 1]",
            "train.num_epochs=1",
        ],
    )
    result = cv_training(config)
    oof = pd.read_parquet(result.oof.oof_path)
    assert not oof["id"].str.startswith("extra:").any()
    assert set(oof["id"]) <= set(main["id"])
    parent = MlflowClient(config.tracking.uri).get_run(result.parent_run_id)
    # Row counts are bookkeeping: params, so that the parent's metrics are the scores.
    assert parent.data.params["n_extra_read"] == "70"
    assert parent.data.params["n_extra_kept"] == "30"  # the 40 copied rows share prompts with the main data
