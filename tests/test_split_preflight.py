"""Split preflight: a train file that cannot be split into cv.n_folds prompt-grouped folds is refused
before any work (one line, exit 2, nothing in MLflow); a split that works but scores poorly warns."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from arena_pref import cli
from arena_pref.commands.options import load_run_config
from arena_pref.preflight import preflight
from pref_core.data.arena import read_arena_csv
from pref_core.data.folds import SplitError, check_splittable
from pref_core.data.synthetic import make_synthetic_frames

ROOT = Path(__file__).resolve().parents[1]


def _frame(n_rows: int, n_prompts: int, labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(n_rows)],
            "prompt": [[f"prompt {i % n_prompts}"] for i in range(n_rows)],
            "label": [labels[i % len(labels)] for i in range(n_rows)],
        }
    )


def test_too_few_prompts_is_refused_with_a_fix_that_works():
    with pytest.raises(SplitError) as err:
        check_splittable(_frame(3, 3, [0, 1, 2]), n_folds=5)
    message = str(err.value)
    assert "3 distinct prompts" in message and "cv.n_folds=5" in message
    assert "--set cv.n_folds=3" in message and "\n" not in message


def test_a_single_prompt_never_suggests_fewer_than_two_folds():
    with pytest.raises(SplitError) as err:
        check_splittable(_frame(30, 1, [0, 1, 2]), n_folds=5)
    message = str(err.value)
    assert "30 rows share 1 distinct prompt," in message
    assert "add rows with at least 5 distinct prompts" in message
    assert "cv.n_folds=1" not in message and "cv.n_folds=0" not in message


def test_a_balanced_large_file_passes_silently():
    assert check_splittable(_frame(300, 100, [0, 1, 2]), n_folds=5) == []


def test_missing_class_rare_class_and_small_folds_warn_once_each():
    one_class = check_splittable(_frame(300, 100, [0]), n_folds=5)
    assert len(one_class) == 1
    assert "winner_model_b, winner_tie" in one_class[0]

    rare = check_splittable(_frame(400, 100, [0] * 49 + [1] * 49 + [2] * 2), n_folds=5)  # tie: 8 of 400 rows
    assert len(rare) == 1 and "winner_tie (8 of 400 rows)" in rare[0]

    small = check_splittable(_frame(60, 30, [0, 1, 2]), n_folds=5)  # 12 validation rows per fold
    assert len(small) == 1 and "about 12 validation rows per fold" in small[0]


def _train(capsys, tmp_path, train_csv: Path, *sets: str) -> tuple[int, str, float]:
    start = time.monotonic()
    code = cli.main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--set",
            f"data.train_csv={train_csv}",
            "--set",
            f"output_dir={tmp_path / 'out'}",
            "--set",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *[a for s in sets for a in ("--set", s)],
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err, time.monotonic() - start


def _write(tmp_path: Path, frame: pd.DataFrame, name: str) -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case", ["three_rows", "single_prompt", "one_fold"])
def test_train_refuses_unsplittable_data_in_seconds(case, capsys, tmp_path):
    train, _ = make_synthetic_frames(n_train=30, n_test=0, seed=1)
    sets: tuple[str, ...] = ()
    if case == "three_rows":
        train = train.iloc[:3]
    elif case == "single_prompt":
        train, _ = make_synthetic_frames(n_train=200, n_test=0, seed=1)
        train = train[train["prompt"].map(lambda cell: len(json.loads(cell)) == 1)].iloc[:30].copy()
        train["prompt"] = train["prompt"].iloc[0]
    else:
        sets = ("cv.n_folds=1",)
    code, output, seconds = _train(capsys, tmp_path, _write(tmp_path, train, "train.csv"), *sets)
    assert code == 2, output
    assert "Traceback" not in output
    assert seconds < 30
    assert not (tmp_path / "mlflow.db").exists()  # nothing written to MLflow
    assert not (tmp_path / "out" / "runs").exists()
    if case != "one_fold":  # the config error lists its problems under one heading
        assert len(output.strip().splitlines()) == 1, output
        assert "cv.n_folds=1" not in output


def test_one_class_file_warns_in_preflight(capsys, tmp_path):
    train, _ = make_synthetic_frames(n_train=200, n_test=0, seed=2)
    train["winner_model_a"], train["winner_model_b"], train["winner_tie"] = 1, 0, 0
    path = _write(tmp_path, train, "one_class.csv")
    config = load_run_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.train_csv={path}",
            f"output_dir={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ],
    )
    preflight(config)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "winner_model_b, winner_tie" in lines[0]
    assert len(read_arena_csv(path, "train").frame) == 200


def test_every_fold_must_train_on_every_class_the_data_has():
    from pref_core.data.folds import check_fold_classes

    # 6 rows, 2 of each class, 5 folds: no class has a row for each fold (sklearn would refuse to stratify).
    with pytest.raises(SplitError, match=r"every class has fewer rows than cv.n_folds=5 .*--set cv.n_folds=2"):
        check_fold_classes(_frame(6, 6, [0, 1, 2]), n_folds=5, seed=0)
    # The only tie rows share one prompt: the fold validating that prompt has no tie row to train on.
    frame = _frame(40, 20, [0, 1])
    frame.loc[[0, 20], "label"] = 2  # rows 0 and 20 both hold "prompt 0"
    with pytest.raises(SplitError, match="all 2 winner_tie rows share one prompt"):
        check_fold_classes(frame, n_folds=2, seed=0)
    # 4 rows, 2 folds, a single winner_model_b row: the fold that validates it cannot train on that class.
    with pytest.raises(SplitError, match="the only winner_model_b row lands in one fold.s validation set"):
        check_fold_classes(_frame(4, 4, [0, 1, 2]), n_folds=2, seed=0)
    check_fold_classes(_frame(60, 30, [0, 1, 2]), n_folds=3, seed=0)  # a splittable file passes
