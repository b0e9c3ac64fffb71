"""Per-fold distillation: a teacher's soft labels for fold k come from a model that never saw fold k's
validation rows.

Teacher side: a CV run with ``train.predict_train_rows: true`` predicts, in each fold, that fold's
training rows with the fold's model (pref_core.train.result.TRAIN_PREDICTIONS_FILE, logged to the fold's MLflow
run). Student side: ``distill.teacher_run`` names that run; fold k pulls the teacher's fold-k file, after checking
that both runs split the same data the same way. ``distill.teacher_dir`` holds the same per-fold files
(``fold_<k>.csv``) for teachers trained elsewhere. ``distill.teacher_csv`` (one file for every fold) is
kept for old configs; if it holds out-of-fold predictions, fold k's soft labels came from teachers that
trained on fold k's validation rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from pref_core.config.schema import RunConfig
from pref_core.data.fold_rows import TeacherMismatchError, check_teacher_leak, check_teacher_split, teacher_dir_file
from pref_core.data.teachers import read_teacher_probs
from pref_core.train.result import TRAIN_PREDICTIONS_FILE


def check_teacher_run(config: RunConfig, train_hash: str, client) -> None:
    """Refuse a distill.teacher_run that split other data or other folds, or has no per-fold soft labels."""
    from mlflow.exceptions import MlflowException

    run_id = config.distill.teacher_run
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TeacherMismatchError(
            f"distill.teacher_run: no run {run_id!r} in {client.tracking_uri}; give the "
            "parent run id of the teacher's cv-training (see the MLflow UI)"
        ) from None
    check_teacher_split(run_id, run.data.params, run.data.tags, train_hash, config.cv.n_folds, config.cv.seed)


def _teacher_fold_run(client, teacher_run: str, fold: int) -> str:
    parent = client.get_run(teacher_run)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{teacher_run}' and tags.arena_pref.fold = '{fold}' "
        "and attributes.status = 'FINISHED'",
    )
    if not runs:
        raise TeacherMismatchError(
            f"distill.teacher_run={teacher_run}: the teacher has no finished fold {fold}; "
            f"train that fold of the teacher first (cv.folds)"
        )
    return runs[0].info.run_id


def teacher_frame(
    config: RunConfig, fold: int, train_hash: str, val_ids: Sequence[str], client
) -> Optional[pd.DataFrame]:
    """The soft labels fold `fold` of this run may read (frame of read_teacher_probs), or None without a
    teacher; a per-fold file holding any of the fold's validation ids is refused (check_teacher_leak)."""
    distill = config.distill
    if distill.teacher_csv is not None:
        return read_teacher_probs(distill.teacher_csv)
    if distill.teacher_run is not None:
        check_teacher_run(config, train_hash, client)
        run_id = _teacher_fold_run(client, distill.teacher_run, fold)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(client.download_artifacts(run_id, TRAIN_PREDICTIONS_FILE, tmp))
            teacher, source = read_teacher_probs(path), f"distill.teacher_run={distill.teacher_run} (fold run {run_id})"
    elif distill.teacher_dir is not None:
        path = teacher_dir_file(distill.teacher_dir, fold)
        teacher, source = read_teacher_probs(path), f"distill.teacher_dir: {path}"
    else:
        return None
    check_teacher_leak(teacher, val_ids, fold, source)
    return teacher
