"""The rows one fold trains and validates on: its split of the cached rows, the extra rows, and the
teacher's soft labels, checked so that no teacher saw the fold's validation rows.

Where a teacher file comes from (MLflow, a folder) is the caller's business; what it may hold is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.data.teachers import TEACHER_COLUMNS, attach_teacher_probs
from pref_core.errors import UserError


class TeacherMismatchError(UserError, ValueError):
    """The teacher cannot serve this student without leaking its validation rows; one line says why."""


def split_fold(dataset, folds: pd.DataFrame, fold: int):
    """(train, validation) datasets of fold `fold`: the rows whose id the fold table (id, fold) puts in
    `fold` validate, every other row trains."""
    val_ids = set(folds.loc[folds["fold"] == fold, "id"].astype(str))
    is_val = np.fromiter((str(i) in val_ids for i in dataset["id"]), dtype=bool, count=len(dataset))
    return dataset.select(np.flatnonzero(~is_val)), dataset.select(np.flatnonzero(is_val))


def fold_train_set(train_ds, extra_ds=None, teacher: Optional[pd.DataFrame] = None, pseudo_ds=None):
    """The fold's training rows plus the extra rows (they train every fold and never validate), with the
    teacher's soft labels attached when there is a teacher (rows it lacks train on their hard label), plus the
    pseudo-labelled rows of `pseudo_dataset` (soft labels only; never validated, never scored)."""
    from datasets import Value, concatenate_datasets

    if extra_ds is not None:
        train_ds = concatenate_datasets([train_ds, extra_ds])
    if teacher is not None:
        train_ds = attach_teacher_probs(train_ds, teacher)
    if pseudo_ds is None:
        return train_ds
    if "teacher_probs" not in train_ds.column_names:  # labelled rows without a teacher: hard labels only
        train_ds = attach_teacher_probs(train_ds, pd.DataFrame(columns=list(TEACHER_COLUMNS)))
    train_ds = train_ds.add_column("hard_mask", [True] * len(train_ds), feature=Value("bool"))
    train_ds = train_ds.add_column("row_weight", [1.0] * len(train_ds), feature=Value("float64"))
    return concatenate_datasets([train_ds, pseudo_ds.select_columns(train_ds.column_names).cast(train_ds.features)])


def pseudo_dataset(unlabeled_ds, rows: pd.DataFrame, weight: float):
    """The tokenized unlabelled rows of `rows` (pref_core.data.pseudo.rows_for_fold: id and the soft labels as
    LABEL_COLUMNS), in that order, as training rows: teacher_probs the soft labels, has_teacher True, hard_mask
    False (no true label: `label` is only the soft label's argmax, which the loss never reads) and row_weight
    `weight` (data.pseudo_weight)."""
    from datasets import List, Value

    position = {str(row_id): i for i, row_id in enumerate(unlabeled_ds["id"])}
    missing = [i for i in rows["id"].astype(str) if i not in position]
    if missing:
        raise TeacherMismatchError(
            f"pseudo-labelled row id {missing[0]} ({len(missing)} in all) is not among the tokenized unlabelled "
            "rows; fix: rerun with the same data.unlabeled_csvs / data.unlabeled_pairs"
        )
    soft = rows[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)  # (n, 3)
    selected = unlabeled_ds.select([position[i] for i in rows["id"].astype(str)])
    selected = selected.remove_columns(["label"]).add_column(
        "label", soft.argmax(axis=1).astype(np.int64).tolist(), feature=Value("int64")
    )
    columns = {
        "teacher_probs": (soft.tolist(), List(Value("float64"))),
        "has_teacher": ([True] * len(rows), Value("bool")),
        "hard_mask": ([False] * len(rows), Value("bool")),
        "row_weight": ([float(weight)] * len(rows), Value("float64")),
    }
    for name, (values, feature) in columns.items():
        selected = selected.add_column(name, values, feature=feature)
    return selected


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
    run_id: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    train_hash: str,
    n_folds: int,
    seed: int,
    need_train_rows: bool = True,
    field: str = "distill.teacher_run",
) -> None:
    """Refuse a teacher run (its logged params and tags) whose fold assignment (data hash, cv.n_folds,
    cv.seed) differs from this run's, or (`need_train_rows`: a distill.teacher_run) that did not write its folds'
    training-row predictions. `field`: the config field that named the teacher, for the message."""
    problems = []
    if tags.get("arena_pref.train_hash") != train_hash:
        problems.append(
            f"its data hash {tags.get('arena_pref.train_hash', '?')[:12]} differs from this run's "
            f"{train_hash[:12]} (train it on the same data.train_csv)"
        )
    for name, value in (("cv.n_folds", n_folds), ("cv.seed", seed)):
        if params.get(name) != str(value):
            problems.append(f"its {name}={params.get(name)} differs from this run's {value}")
    if need_train_rows and params.get("train.predict_train_rows") not in ("True", "true"):
        problems.append("it ran without train.predict_train_rows=true, so it has no per-fold soft labels")
    if problems:
        raise TeacherMismatchError(
            f"{field}={run_id}: "
            + "; ".join(problems)
            + "; fold k's soft labels must come from a teacher that never saw fold k's "
            "validation rows"
        )
