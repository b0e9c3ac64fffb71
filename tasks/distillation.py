"""Per-fold distillation: a teacher's soft labels for fold k come from a model that never saw fold k's
validation rows.

Teacher side: a CV run with ``train.predict_train_rows: true`` predicts, in each fold, that fold's
training rows with the fold's model (TRAIN_PREDICTIONS, logged to the fold's MLflow run). Student side:
``distill.teacher_run`` names that run; fold k pulls the teacher's fold-k file, after checking that both
runs split the same data the same way. ``distill.teacher_dir`` holds the same per-fold files
(``fold_<k>.csv``) for teachers trained elsewhere. ``distill.teacher_csv`` (one file for every fold) is
kept for old configs; if it holds out-of-fold predictions, fold k's soft labels came from teachers that
trained on fold k's validation rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from pref_core.config import RunConfig
from pref_core.teachers import read_teacher_probs
from pref_core.labels import LABEL_COLUMNS

TRAIN_PREDICTIONS = "train_predictions.parquet"


class TeacherMismatchError(ValueError):
    """The teacher cannot serve this student without leaking its validation rows; one line says why."""


def check_teacher_run(config: RunConfig, train_hash: str, client) -> None:
    """Refuse a distill.teacher_run whose fold assignment (data hash, cv.n_folds, cv.seed) differs from
    this run's, or that did not write its folds' training-row predictions."""
    from mlflow.exceptions import MlflowException

    run_id = config.distill.teacher_run
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TeacherMismatchError(f"distill.teacher_run: no run {run_id!r} in {client.tracking_uri}; give the "
                                   "parent run id of the teacher's cv-training (see the MLflow UI)") from None
    params, tags = run.data.params, run.data.tags
    problems = []
    if tags.get("arena_pref.train_hash") != train_hash:
        problems.append(f"its data hash {tags.get('arena_pref.train_hash', '?')[:12]} differs from this run's "
                        f"{train_hash[:12]} (train it on the same data.train_csv)")
    for field, value in (("cv.n_folds", config.cv.n_folds), ("cv.seed", config.cv.seed)):
        if params.get(field) != str(value):
            problems.append(f"its {field}={params.get(field)} differs from this run's {value}")
    if params.get("train.predict_train_rows") not in ("True", "true"):
        problems.append("it ran without train.predict_train_rows=true, so it has no per-fold soft labels")
    if problems:
        raise TeacherMismatchError(f"distill.teacher_run={run_id}: " + "; ".join(problems)
                                   + "; fold k's soft labels must come from a teacher that never saw fold k's "
                                   "validation rows")


def _teacher_fold_run(client, teacher_run: str, fold: int) -> str:
    parent = client.get_run(teacher_run)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{teacher_run}' and tags.arena_pref.fold = '{fold}' and attributes.status = 'FINISHED'",
    )
    if not runs:
        raise TeacherMismatchError(f"distill.teacher_run={teacher_run}: the teacher has no finished fold {fold}; "
                                   f"train that fold of the teacher first (cv.folds)")
    return runs[0].info.run_id


def teacher_frame(config: RunConfig, fold: int, train_hash: str, val_ids: Sequence[str], client) -> Optional[pd.DataFrame]:
    """The soft labels fold `fold` of this run may read (frame of read_teacher_probs), or None without a teacher.

    Refuses a per-fold teacher file that holds any of the fold's validation ids: such a file was made for
    another split, and its model may have trained on them.
    """
    distill = config.distill
    if distill.teacher_csv is not None:
        return read_teacher_probs(distill.teacher_csv)
    if distill.teacher_run is not None:
        check_teacher_run(config, train_hash, client)
        run_id = _teacher_fold_run(client, distill.teacher_run, fold)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(client.download_artifacts(run_id, TRAIN_PREDICTIONS, tmp))
            teacher, source = read_teacher_probs(path), f"distill.teacher_run={distill.teacher_run} (fold run {run_id})"
    elif distill.teacher_dir is not None:
        candidates = [Path(distill.teacher_dir) / f"fold_{fold}{suffix}" for suffix in (".csv", ".parquet")]
        path = next((p for p in candidates if p.is_file()), candidates[0])
        teacher, source = read_teacher_probs(path), f"distill.teacher_dir: {path}"
    else:
        return None
    leaked = sorted(set(teacher["id"]) & {str(i) for i in val_ids})
    if leaked:
        raise TeacherMismatchError(
            f"{source}: holds soft labels for {len(leaked)} of fold {fold}'s validation rows (first id {leaked[0]}); "
            "its teacher used another fold split: train it with the same data, cv.n_folds and cv.seed"
        )
    return teacher


def predict_train_rows(config: RunConfig, adapter_dir: Path, base_model: str, train_ds, dest: Path) -> Path:
    """The fold model's probabilities on the fold's own training rows (the student's soft labels for that fold)."""
    from pref_core.inference import predict_probabilities
    from pref_core.modeling import load_preference_model
    from pref_core.training import torch_cpu_threads

    with torch_cpu_threads(config.train.cpu_threads):
        model, tokenizer = load_preference_model(config, adapter_dir, name_or_path=base_model)
        probs = predict_probabilities(model, train_ds, batch_size=config.train.eval_batch_size, tta_swap=config.train.tta_swap,
                        pad_token_id=tokenizer.pad_token_id)
    frame = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    frame.insert(0, "id", list(train_ds["id"]))
    frame.to_parquet(dest, index=False)
    return dest
