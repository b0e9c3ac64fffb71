"""Per-fold distillation: student fold k reads soft labels only from a teacher model that never saw
fold k's validation rows (teacher run -> student run on the tiny model, and the refusals)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_pref.tasks import distillation
from pref_core.config.schema import ConfigError
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.train.result import TRAIN_PREDICTIONS_FILE
from tests.factories import tiny_recipe_config


def tiny(tmp_path, synthetic_csvs, *extra):
    return tiny_recipe_config(
        tmp_path, synthetic_csvs[0], "cv.execution=in_process", "cv.folds=[0, 1]", "train.num_epochs=1", *extra
    )


def probs_frame(ids, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1, 1, 1], size=len(ids))
    frame = pd.DataFrame(p, columns=list(LABEL_COLUMNS))
    frame.insert(0, "id", [str(i) for i in ids])
    return frame


def test_one_teacher_source_at_a_time(tmp_path, synthetic_csvs):
    with pytest.raises(ConfigError, match="distill.teacher_csv and distill.teacher_run are both set"):
        tiny(tmp_path, synthetic_csvs, "distill.teacher_csv=t.csv", "distill.teacher_run=abc")


def test_teacher_dir_fold_file_with_validation_ids_is_refused(tmp_path, synthetic_csvs):
    config = tiny(tmp_path, synthetic_csvs, f"distill.teacher_dir={tmp_path / 'teacher'}")
    (tmp_path / "teacher").mkdir()
    train_ids, val_ids = [f"t{i}" for i in range(20)], [f"v{i}" for i in range(5)]
    probs_frame(train_ids).to_csv(tmp_path / "teacher" / "fold_0.csv", index=False)
    got = distillation.teacher_frame(config, 0, "hash", val_ids, client=None)
    assert got["id"].tolist() == train_ids
    probs_frame(train_ids + val_ids[:1]).to_csv(tmp_path / "teacher" / "fold_1.csv", index=False)
    with pytest.raises(distillation.TeacherMismatchError, match="fold 1's validation rows .*first id v0"):
        distillation.teacher_frame(config, 1, "hash", val_ids, client=None)


def produced_by(frame: pd.DataFrame, teacher_files: dict[int, pd.DataFrame]) -> dict[str, set[int]]:
    """id -> the teacher folds whose model predicted exactly these probabilities for it."""
    out: dict[str, set[int]] = {}
    for j, teacher in teacher_files.items():
        table = teacher.set_index("id")[list(LABEL_COLUMNS)]
        common = frame[frame["id"].isin(table.index)]
        same = np.isclose(common[list(LABEL_COLUMNS)].to_numpy(), table.loc[common["id"]].to_numpy(), atol=1e-9).all(1)
        for row_id in common["id"][same]:
            out.setdefault(row_id, set()).add(j)
    return out


@pytest.mark.slow
def test_teacher_run_to_student_run_reads_only_fold_safe_soft_labels(
    prefect_harness, tmp_path, synthetic_csvs, monkeypatch
):
    from arena_pref.flows.cv_training import cv_training
    from mlflow import MlflowClient

    teacher_config = tiny(tmp_path, synthetic_csvs, "train.predict_train_rows=true")
    teacher = cv_training(teacher_config)
    client = MlflowClient(teacher_config.tracking.uri)
    teacher_files = {}
    for fold, run_id in teacher.fold_run_ids.items():
        path = client.download_artifacts(run_id, TRAIN_PREDICTIONS_FILE, str(tmp_path / f"t{fold}"))
        teacher_files[int(fold)] = pd.read_parquet(path)

    read: dict[int, pd.DataFrame] = {}
    original = distillation.teacher_frame

    def spy(config, fold, train_hash, val_ids, client):
        frame = original(config, fold, train_hash, val_ids, client)
        read[fold] = frame
        return frame

    monkeypatch.setattr(distillation, "teacher_frame", spy)
    student_config = tiny(
        tmp_path,
        synthetic_csvs,
        f"distill.teacher_run={teacher.parent_run_id}",
        "distill.kl_weight=0.5",
        "train.learning_rate=2e-3",
    )
    student = cv_training(student_config)
    assert sorted(read) == [0, 1] and sorted(student.fold_run_ids) == [0, 1]

    # Which rows trained each teacher fold model, and which rows each student fold validates on.
    folds = pd.read_parquet(next((tmp_path / "out" / "runs").glob("*/folds.parquet")))
    trained_on = {j: set(folds.loc[folds["fold"] != j, "id"]) for j in teacher_files}
    validates = {k: set(folds.loc[folds["fold"] == k, "id"]) for k in read}
    for k, frame in read.items():
        assert len(frame) == len(trained_on[k])  # one soft label per training row of the fold
        sources = produced_by(frame, teacher_files)
        assert set(sources) == set(frame["id"])  # every soft label is traced to a teacher fold model
        for row_id, models in sources.items():
            # The leak this prevents: a soft label from a model that trained on this fold's validation rows.
            assert any(not (trained_on[j] & validates[k]) for j in models), (k, row_id, models)
    fold_run = client.get_run(student.fold_run_ids[0])
    assert "val_log_loss" in fold_run.data.metrics

    # A teacher split another way is refused in one line before training.
    other = tiny(tmp_path, synthetic_csvs, f"distill.teacher_run={teacher.parent_run_id}", "cv.seed=7")
    with pytest.raises(distillation.TeacherMismatchError, match=r"cv.seed=42 differs from this run's 7") as err:
        distillation.check_teacher_run(
            other, client.get_run(student.parent_run_id).data.tags["arena_pref.train_hash"], client
        )
    assert "\n" not in str(err.value)
