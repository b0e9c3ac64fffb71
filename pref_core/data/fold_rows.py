"""The rows one fold trains and validates on: its split of the cached rows, the extra rows, and the
teacher's soft labels, checked so that no teacher saw the fold's validation rows.

Where a teacher file comes from (MLflow, a folder) is the caller's business; what it may hold is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from pref_core.data.teachers import attach_teacher_probs
from pref_core.errors import UserError


class TeacherMismatchError(UserError, ValueError):
    """The teacher cannot serve this student without leaking its validation rows; one line says why."""


def split_fold(dataset, folds: pd.DataFrame, fold: int):
    """(train, validation) datasets of fold `fold`: the rows whose id the fold table (id, fold) puts in
    `fold` validate, every other row trains."""
    val_ids = set(folds.loc[folds["fold"] == fold, "id"].astype(str))
    is_val = np.fromiter((str(i) in val_ids for i in dataset["id"]), dtype=bool, count=len(dataset))
    return dataset.select(np.flatnonzero(~is_val)), dataset.select(np.flatnonzero(is_val))


def fold_train_set(train_ds, extra_ds=None, teacher: Optional[pd.DataFrame] = None):
    """The fold's training rows plus the extra rows (they train every fold and never validate), with the
    teacher's soft labels attached when there is a teacher (rows it lacks train on their hard label)."""
    if extra_ds is not None:
        from datasets import concatenate_datasets

        train_ds = concatenate_datasets([train_ds, extra_ds])
    return attach_teacher_probs(train_ds, teacher) if teacher is not None else train_ds


def teacher_dir_file(teacher_dir: str | Path, fold: int) -> Path:
    """distill.teacher_dir's file for `fold`: fold_<k>.csv, else fold_<k>.parquet (the .csv path when neither
    exists, so that the reader's error names the file expected)."""
    candidates = [Path(teacher_dir) / f"fold_{fold}{suffix}" for suffix in (".csv", ".parquet")]
    return next((p for p in candidates if p.is_file()), candidates[0])


def check_teacher_leak(teacher: pd.DataFrame, val_ids: Sequence[str], fold: int, source: str) -> None:
    """Refuse a per-fold teacher file that holds any of the fold's validation ids: such a file was made for
    another split, and its model may have trained on them."""
    leaked = sorted(set(teacher["id"].astype(str)) & {str(i) for i in val_ids})
    if leaked:
        raise TeacherMismatchError(
            f"{source}: holds soft labels for {len(leaked)} of fold {fold}'s validation rows (first id {leaked[0]}); "
            "its teacher used another fold split: train it with the same data, cv.n_folds and cv.seed"
        )


def check_teacher_split(
    run_id: str, params: Mapping[str, str], tags: Mapping[str, str], train_hash: str, n_folds: int, seed: int
) -> None:
    """Refuse a teacher run (its logged params and tags) whose fold assignment (data hash, cv.n_folds,
    cv.seed) differs from this run's, or that did not write its folds' training-row predictions."""
    problems = []
    if tags.get("arena_pref.train_hash") != train_hash:
        problems.append(
            f"its data hash {tags.get('arena_pref.train_hash', '?')[:12]} differs from this run's "
            f"{train_hash[:12]} (train it on the same data.train_csv)"
        )
    for field, value in (("cv.n_folds", n_folds), ("cv.seed", seed)):
        if params.get(field) != str(value):
            problems.append(f"its {field}={params.get(field)} differs from this run's {value}")
    if params.get("train.predict_train_rows") not in ("True", "true"):
        problems.append("it ran without train.predict_train_rows=true, so it has no per-fold soft labels")
    if problems:
        raise TeacherMismatchError(
            f"distill.teacher_run={run_id}: "
            + "; ".join(problems)
            + "; fold k's soft labels must come from a teacher that never saw fold k's "
            "validation rows"
        )
