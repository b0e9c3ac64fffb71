"""Teacher probabilities for distillation (distill.teacher_csv): reading, validation, and joining them to a dataset.

A teacher file holds one row of class probabilities per train id, typically the out-of-fold predictions
of a stronger run. Every row must be usable: a dropped teacher row would silently turn its example into
hard-label training, so any bad row fails the read (there is no bad-row policy here), with every problem
listed as arena ingest lists them (`pref_core.data.problems`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from pref_core.data.arena import cell_text, check_ids
from pref_core.data.labels import ALL_LABELS_COLUMN, LABEL_COLUMNS
from pref_core.data.problems import ProblemCollector, file_error

TEACHER_COLUMNS: tuple[str, str, str, str] = ("id", *LABEL_COLUMNS)
TEACHER_SUM_TOLERANCE = 1e-3  # absorbs the rounding of probabilities written as text


def read_teacher_probs(path: Union[str, Path]) -> pd.DataFrame:
    """Read and validate a teacher's class probabilities per train id (distill.teacher_csv).

    A CSV (or a ``.parquet`` file, such as a fold's val_predictions of a stronger run) with ``id`` and the
    three LABEL_COLUMNS; other columns are ignored. For honest distillation the teacher's probability of
    a row should come from a model that did not train on it (out-of-fold predictions).
    Every row must be usable, since a dropped teacher row would silently turn its example into hard-label
    training: each cell a number in [0, 1], each row summing to 1 within TEACHER_SUM_TOLERANCE, ids
    non-empty and unique. Raises DataValidationError listing every problem (row id, column, fix).
    Returns ``id`` (str) and the three columns as float64, renormalized so that each row sums to 1.
    """
    path = Path(path)
    raw = _read_teacher_table(path)
    ids = [cell_text(x) for x in raw["id"].tolist()]
    collector = ProblemCollector.for_ids(ids)
    check_ids(ids, collector.report)
    values = _parse_probabilities(raw, collector.report)
    sums = values.sum(axis=1)  # (n,); NaN for rows with a bad cell: those are reported already
    for pos in np.flatnonzero(np.abs(sums - 1.0) > TEACHER_SUM_TOLERANCE):
        collector.report(
            int(pos),
            ALL_LABELS_COLUMN,
            f"probabilities sum to {sums[pos]:.6g}, not 1 (tolerance {TEACHER_SUM_TOLERANCE}); fix: write "
            f"normalized probabilities (softmax outputs) for {', '.join(LABEL_COLUMNS)}",
        )
    if collector.n_bad:
        raise collector.error(
            path,
            f"{path}: {collector.n_bad} of {len(raw)} teacher rows are invalid; fix the rows listed below "
            "(distill.teacher_csv needs one probability row per id).",
        )
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=str)})
    normalized = values / sums[:, None]  # (n, 3); exact sums of 1 (up to float rounding) after the tolerance check
    for k, column in enumerate(LABEL_COLUMNS):
        frame[column] = normalized[:, k].astype(np.float64)
    return frame


def _parse_probabilities(raw: pd.DataFrame, report) -> np.ndarray:
    """(n, 3) probabilities in LABEL_COLUMNS order; NaN where a cell is bad (reported)."""
    values = np.full((len(raw), len(LABEL_COLUMNS)), np.nan)
    for k, column in enumerate(LABEL_COLUMNS):
        for pos, cell in enumerate(raw[column].tolist()):
            try:
                values[pos, k] = _parse_probability(cell)
            except ValueError as err:
                report(pos, column, str(err))
    return values


def attach_teacher_probs(dataset, teacher: pd.DataFrame):
    """Add the teacher's probabilities to a tokenized dataset (joined on ``id``): returns a new `datasets.Dataset`.

    New columns: ``teacher_probs`` (list of 3 float64, LABEL_COLUMNS order) and ``has_teacher`` (bool).
    Rows without a teacher row (e.g. data.extra_csvs rows) get has_teacher=False and a uniform placeholder
    that the loss never reads: they train on their hard label only. Teacher rows for ids outside the
    dataset (other folds) are ignored. `teacher`: the frame of `read_teacher_probs`.
    """
    import datasets

    missing = [c for c in TEACHER_COLUMNS if c not in teacher.columns]
    if missing:
        raise ValueError(
            f"attach_teacher_probs: the teacher frame lacks column(s) {missing}; pass the frame of "
            "pref_core.data.teachers.read_teacher_probs(distill.teacher_csv)"
        )
    teacher_ids = teacher["id"].astype(str)
    if teacher_ids.duplicated().any():
        repeated = sorted(set(teacher_ids[teacher_ids.duplicated()]))[:5]
        raise ValueError(
            f"attach_teacher_probs: the teacher repeats ids (first {repeated}); read it with "
            "pref_core.data.teachers.read_teacher_probs, which rejects repeated ids"
        )
    lookup = dict(zip(teacher_ids, teacher[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64).tolist()))
    placeholder = [1.0 / len(LABEL_COLUMNS)] * len(LABEL_COLUMNS)
    found = [lookup.get(str(row_id)) for row_id in dataset["id"]]
    # Attaching twice (a new teacher) replaces the old columns instead of failing on the name.
    stale = [c for c in ("teacher_probs", "has_teacher") if c in dataset.column_names]
    if stale:
        dataset = dataset.remove_columns(stale)
    dataset = dataset.add_column(
        "teacher_probs",
        [placeholder if probs is None else probs for probs in found],
        feature=datasets.List(datasets.Value("float64")),
    )
    return dataset.add_column("has_teacher", [probs is not None for probs in found], feature=datasets.Value("bool"))


def _read_teacher_table(path: Path) -> pd.DataFrame:
    """The teacher file as a frame with the TEACHER_COLUMNS, raising DataValidationError for file-level problems."""
    fix_path = "fix: check distill.teacher_csv"
    if not path.exists():
        raise file_error(path, f"file not found; {fix_path}")
    if not path.is_file():
        raise file_error(path, "not a regular file (a folder?); fix: point distill.teacher_csv to the file itself")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            # Text cells, as in read_arena_csv: "NA" or "" stay text and are reported, never guessed.
            frame = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False, na_filter=False)
    except UnicodeDecodeError as err:
        raise file_error(
            path, f"not UTF-8 ({err.reason} at byte {err.start}); fix: re-save the file as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise file_error(path, "file is empty; fix: write a header line (id, winner_model_a, ...) and rows") from None
    except pd.errors.ParserError as err:
        raise file_error(path, f"not a well-formed CSV: {err}; fix: check the quoting of that line") from None
    except (OSError, ValueError) as err:  # an unreadable or corrupt parquet file
        raise file_error(
            path, f"cannot be read ({err}); fix: write it again with pandas to_parquet or to_csv"
        ) from None
    # pandas renames a repeated header column "x" to "x.1": which copy is meant would be a guess.
    repeated = [c for c in TEACHER_COLUMNS if f"{c}.1" in frame.columns]
    if repeated:
        raise file_error(path, f"the header repeats column(s) {repeated}; fix: keep one column of each name")
    missing = [c for c in TEACHER_COLUMNS if c not in frame.columns]
    if missing:
        raise file_error(
            path,
            f"missing required column(s) {missing}; found columns {list(frame.columns)}; fix: a teacher file "
            f"needs {list(TEACHER_COLUMNS)} (probabilities per train id)",
        )
    if frame.empty:
        raise file_error(path, "the file has a header but no rows; fix: write one row per train id")
    return frame[list(TEACHER_COLUMNS)].reset_index(drop=True)


def _parse_probability(cell: object) -> float:
    """One teacher cell as a probability in [0, 1]; ValueError saying what is wrong otherwise."""
    text = cell if isinstance(cell, str) else cell_text(cell)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number; fix: write the probability as a decimal such as 0.25") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number; fix: write a probability in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is outside [0, 1]; fix: write probabilities, not logits")
    return value
