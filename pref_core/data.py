"""Ingest of Kaggle-format arena CSVs, with validation that reports every problem at once.

A cell such as ``prompt`` holds a JSON list of turns (``["hi", "and then?"]``,
entries may be JSON ``null``). It is parsed with ``json.loads`` only: the seed
notebook and the 1st-place code used ``eval`` with a bare ``except``, which
runs whatever the file contains and silently mangles cells it cannot parse.

Two kinds of problems:
- file-level (missing file, not UTF-8, missing columns, ...): nothing can be
  read, so `DataValidationError` is raised right away;
- row-level (bad JSON, unequal turn counts, bad labels, duplicated ids, ...):
  all of them are collected; if the share of bad rows is above
  ``data.max_bad_fraction`` the error lists every one, otherwise the bad rows
  are dropped and returned in `IngestResult.rejected` (never dropped silently).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping, Optional, Union

import numpy as np
import pandas as pd

from pref_core.labels import LABEL_COLUMNS

TURN_COLUMNS: tuple[str, str, str] = ("prompt", "response_a", "response_b")
MODEL_COLUMNS: tuple[str, str] = ("model_a", "model_b")
REQUIRED_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(  # read-only: no module-level mutable state
    {"train": ("id", *TURN_COLUMNS, *LABEL_COLUMNS), "test": ("id", *TURN_COLUMNS)}
)
REJECTED_COLUMNS: tuple[str, str, str] = ("id", "column", "reason")

_TURNS_FIX = 'the cell must be a JSON list of strings such as ["hi"]'
_LABELS_COLUMN = "+".join(LABEL_COLUMNS)  # `column` of a problem about the three labels together
# A lone UTF-16 surrogate can only come from a JSON escape (the file itself is valid UTF-8).
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Problem:
    """One validation problem; `row_id`/`column` are None for file-level problems."""

    row_id: Optional[str]
    column: Optional[str]
    reason: str

    def __str__(self) -> str:
        where = []
        if self.row_id is not None:
            where.append(f"row id={self.row_id}")
        if self.column is not None:
            where.append(f"column={self.column}")
        return f"{' '.join(where) or 'file'}: {self.reason}"


class DataValidationError(ValueError):
    """The input cannot be used as it is; the message lists every problem with its fix.

    `path` is the file (None for an in-memory frame); `problems` holds all of them.
    """

    def __init__(self, path: Union[str, Path, None], headline: str, problems: list[Problem]):
        self.path = None if path is None else Path(path)
        self.problems = list(problems)
        self.headline = headline
        super().__init__("\n".join([headline, *(f"  - {p}" for p in self.problems)]))


@dataclass
class IngestResult:
    """The validated rows (`frame`) and the rows that were dropped, one line per problem (`rejected`)."""

    frame: pd.DataFrame
    rejected: pd.DataFrame
    n_read: int
    n_kept: int
    n_rejected: int  # rows, not problems: one row can have several


def parse_turns(cell: object) -> list[Optional[str]]:
    """Parse one JSON-list cell into its turns (``str`` or ``None`` for a JSON null).

    Uses ``json.loads`` only, so a cell like ``["__import__('os')"]`` is just a
    string. Raises ValueError saying what is wrong for anything that is not a
    non-empty JSON list of strings/nulls. Lone UTF-16 surrogates from escapes
    such as ``"\\ud83d"`` (an emoji cut in half) cannot be encoded as UTF-8 and
    would crash the tokenizer, so they become U+FFFD.
    """
    if not isinstance(cell, str):
        raise ValueError(f"expected text, got {type(cell).__name__}; fix: {_TURNS_FIX}")
    if not cell.strip():
        raise ValueError(f"empty cell; fix: {_TURNS_FIX}")
    try:
        # strict=False: raw newlines/tabs inside a string (hand-edited files) are text, not an error.
        turns = json.loads(cell, strict=False)
    except json.JSONDecodeError as err:
        at = "" if err.msg.endswith(" at") else " at"  # "Unterminated string starting at" has its own
        raise ValueError(f"invalid JSON ({err.msg}{at} char {err.pos}); fix: {_TURNS_FIX}") from None
    except RecursionError:
        raise ValueError(f"invalid JSON (nested too deeply); fix: {_TURNS_FIX}") from None
    if not isinstance(turns, list):
        raise ValueError(f"JSON {type(turns).__name__} instead of a list; fix: {_TURNS_FIX}")
    if not turns:
        raise ValueError(f"empty list (no turns); fix: {_TURNS_FIX}")
    for i, turn in enumerate(turns):
        if turn is not None and not isinstance(turn, str):
            raise ValueError(
                f"turn {i} is a JSON {type(turn).__name__}, not a string or null; fix: {_TURNS_FIX}"
            )
    if "\\u" in cell:  # cheap pre-check: surrogates can only come from \u escapes
        turns = [t if t is None else _SURROGATE.sub("\ufffd", t) for t in turns]
    return turns


def read_arena_csv(
    path: Union[str, Path], kind: Literal["train", "test"], max_bad_fraction: float = 0.0
) -> IngestResult:
    """Read and validate a Kaggle arena CSV (train: with one-hot labels; test: without).

    Returns `IngestResult`; ``frame`` has ``id`` (str), ``model_a``/``model_b``
    when present, ``prompt``/``response_a``/``response_b`` as lists of
    ``str | None`` and, for train, the three label columns (int) plus ``label``
    (index in LABEL_COLUMNS). Columns other than these are ignored.
    Raises DataValidationError for file-level problems, or when the share of
    bad rows is above `max_bad_fraction`.
    """
    _check_arguments(kind, max_bad_fraction)
    path = Path(path)
    raw = _read_table(path, kind)
    return _validate(raw, kind, max_bad_fraction, source=str(path), path=path)


def validate_arena_frame(
    raw: pd.DataFrame,
    kind: Literal["train", "test"],
    max_bad_fraction: float = 0.0,
    source: str = "input frame",
) -> IngestResult:
    """Validate an in-memory frame in the CSV format (JSON cells as strings), as `read_arena_csv` does a file.

    For model serving and notebooks: ids may be numbers (made strings), label
    cells numbers or strings; turn cells may also be lists already. `source`
    names the input in error messages.
    """
    _check_arguments(kind, max_bad_fraction)
    required = REQUIRED_COLUMNS[kind]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise DataValidationError(
            None,
            f"{source}: cannot use this frame.",
            [Problem(None, None, f"missing required column(s) {missing}; fix: a {kind} frame needs {list(required)}")],
        )
    if kind == "test" and any(c in raw.columns for c in LABEL_COLUMNS):
        present = [c for c in LABEL_COLUMNS if c in raw.columns]
        raise DataValidationError(
            None,
            f"{source}: cannot use this frame.",
            [Problem(None, None, f"a test frame must not carry label columns, found {present}; fix: drop them")],
        )
    if raw.empty:
        raise DataValidationError(None, f"{source}: cannot use this frame.", [Problem(None, None, "no rows")])
    return _validate(raw.reset_index(drop=True), kind, max_bad_fraction, source=source, path=None)


def _check_arguments(kind: str, max_bad_fraction: float) -> None:
    if kind not in REQUIRED_COLUMNS:
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"data.max_bad_fraction must lie in [0, 1], got {max_bad_fraction!r}")


def _validate(
    raw: pd.DataFrame, kind: str, max_bad_fraction: float, source: str, path: Optional[Path]
) -> IngestResult:
    """Row-level checks of a frame that has the required columns; applies the bad-row policy."""
    n_read = len(raw)
    problems: dict[int, list[Problem]] = {}  # row position -> its problems (ordered by row)

    def report(pos: int, column: str, reason: str) -> None:
        problems.setdefault(pos, []).append(Problem(_row_label(ids[pos], pos), column, reason))

    ids = [_as_text(x) for x in raw["id"].tolist()]
    _check_ids(ids, report)
    parsed = {column: _parse_column(raw[column].tolist(), column, report) for column in TURN_COLUMNS}
    _check_turn_counts(parsed, report)
    labels = _check_labels(raw, report) if kind == "train" else None

    bad = sorted(problems)
    all_problems = [p for pos in bad for p in problems[pos]]
    n_bad = len(bad)
    if n_bad and n_bad / n_read > max_bad_fraction:
        needed = math.ceil(n_bad / n_read * 100) / 100
        raise DataValidationError(
            path,
            f"{source}: {n_bad} of {n_read} rows are invalid ({n_bad / n_read:.1%}), more than the "
            f"allowed data.max_bad_fraction={max_bad_fraction}. Fix the rows listed below, or set "
            f"data.max_bad_fraction={needed} or higher (e.g. --set data.max_bad_fraction={needed}) "
            "to drop them into a rejected-rows file.",
            all_problems,
        )
    if n_bad == n_read:
        raise DataValidationError(path, f"{source}: all {n_read} rows are invalid; nothing left to use.", all_problems)

    keep = np.ones(n_read, dtype=bool)
    keep[bad] = False
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=str)})
    for column in MODEL_COLUMNS:
        if column in raw.columns:
            frame[column] = pd.Series([_as_text(x) for x in raw[column].tolist()], dtype=str)
    for column in TURN_COLUMNS:
        frame[column] = pd.Series(parsed[column], dtype=object)
    if labels is not None:
        for k, column in enumerate(LABEL_COLUMNS):
            frame[column] = [row[k] for row in labels]
        frame["label"] = [row.index(1) if row.count(1) == 1 else -1 for row in labels]
    frame = frame[keep].reset_index(drop=True)
    if labels is not None:
        frame = frame.astype({**{c: "int64" for c in LABEL_COLUMNS}, "label": "int64"})

    rejected = pd.DataFrame(
        [(p.row_id, p.column, p.reason) for p in all_problems], columns=list(REJECTED_COLUMNS), dtype=str
    )
    return IngestResult(frame=frame, rejected=rejected, n_read=n_read, n_kept=len(frame), n_rejected=n_bad)


def write_rejected(rejected: pd.DataFrame, path: Union[str, Path]) -> Path:
    """Write the rejected-rows table (id, column, reason) as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rejected.to_csv(path, index=False)
    return path


def hash_file(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (the 184 MB train.csv never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# -- file level ---------------------------------------------------------------------------------


def _fail(path: Path, reason: str, column: Optional[str] = None) -> DataValidationError:
    return DataValidationError(path, f"{path}: cannot use this file.", [Problem(None, column, reason)])


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    """Read the CSV as text cells, raising DataValidationError for any file-level problem."""
    if not path.exists():
        raise _fail(path, "file not found; fix: check data.train_csv / data.test_csv")
    if not path.is_file():
        raise _fail(path, "not a regular file (a folder?); fix: point to the CSV file itself")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _fail(path, f"cannot be read ({err.strerror}); fix: check its permissions") from None
    if not data or data.isspace():
        raise _fail(path, "file is empty; fix: export the CSV again with a header line and rows")
    try:
        data.decode("utf-8")  # strict: report the first bad byte instead of guessing a codec
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _fail(
            path,
            f"not UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start} (line {line}) is invalid "
            f"({err.reason}); fix: re-save the file as UTF-8 (for example pandas to_csv(encoding='utf-8'))",
        ) from None
    end = data.find(b"\n")
    header_line = data[: end if end >= 0 else len(data)].decode("utf-8").removeprefix("\ufeff").rstrip("\r")
    del data
    header = next(csv.reader([header_line]), [])
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise _fail(path, f"the header repeats column(s) {duplicated}; fix: keep one column of each name")
    required = REQUIRED_COLUMNS[kind]
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        if kind == "train" and all(c in missing for c in LABEL_COLUMNS):
            hint = " (it has no label columns: is it a test file? then read it with kind='test')"
        raise _fail(
            path,
            f"missing required column(s) {missing} for a {kind} file{hint}; found columns {header}; "
            f"fix: a {kind} file needs {list(required)}",
        )
    if kind == "test":
        present = [c for c in LABEL_COLUMNS if c in header]
        if present:
            raise _fail(
                path,
                f"a test file must not carry label columns, found {present}; fix: read it as kind='train' "
                "or drop those columns",
            )

    try:
        # Reading the path is ~3x faster than parsing the decoded text from a StringIO.
        frame = pd.read_csv(
            path,
            encoding="utf-8-sig",  # a UTF-8 BOM (Excel) is fine
            dtype=str,
            keep_default_na=False,  # "NA", "null", "" stay text: ids and cells are not mangled
            na_filter=False,
            # No usecols: with it pandas silently ignores surplus fields of a malformed line.
        )
    except pd.errors.ParserError as err:
        raise _fail(path, f"not a well-formed CSV: {err}; fix: check the quoting of that line") from None
    if frame.empty:
        raise _fail(path, "the file has a header but no data rows; fix: export the rows too")
    return frame[[c for c in frame.columns if c in required or c in MODEL_COLUMNS]]


# -- row level ----------------------------------------------------------------------------------


def _as_text(value: object) -> str:
    """A cell of an in-memory frame as text: numbers become strings, missing values empty."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _row_label(row_id: str, pos: int) -> str:
    # Data row numbers (1 = first row after the header) name rows that have no usable id.
    return row_id if row_id.strip() else f"<empty, data row {pos + 1}>"


def _check_ids(ids: list[str], report) -> None:
    seen: dict[str, list[int]] = {}
    for pos, row_id in enumerate(ids):
        if not row_id.strip():
            report(pos, "id", "empty id; fix: give every row a unique id")
        else:
            seen.setdefault(row_id, []).append(pos)
    for row_id, positions in seen.items():
        if len(positions) > 1:
            rows = ", ".join(str(p + 1) for p in positions)
            for pos in positions:
                report(
                    pos, "id",
                    f"id appears on {len(positions)} rows (data rows {rows}); fix: ids must be unique "
                    "(drop the duplicates or give them new ids)",
                )


def _parse_column(cells: list[str], column: str, report) -> list[Optional[list[Optional[str]]]]:
    out: list[Optional[list[Optional[str]]]] = []
    for pos, cell in enumerate(cells):
        try:
            # An in-memory frame may hold parsed lists already; they pass the same checks.
            out.append(parse_turns(json.dumps(cell) if isinstance(cell, list) else cell))
        except ValueError as err:
            report(pos, column, str(err))
            out.append(None)
    return out


def _check_turn_counts(parsed: dict[str, list], report) -> None:
    for pos, prompt in enumerate(parsed["prompt"]):
        if prompt is None:
            continue
        for column in TURN_COLUMNS[1:]:
            turns = parsed[column][pos]
            if turns is not None and len(turns) != len(prompt):
                report(
                    pos, column,
                    f"{len(turns)} turn(s) but prompt has {len(prompt)}; fix: prompt, response_a and "
                    "response_b must hold one entry per turn (use null for a missing answer)",
                )


def _check_labels(raw: pd.DataFrame, report) -> list[list[int]]:
    """Parse the one-hot label columns; returns per-row [a, b, tie] (bad cells as -1)."""
    values = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
    columns = [raw[c].tolist() for c in LABEL_COLUMNS]
    rows: list[list[int]] = []
    for pos, cells in enumerate(zip(*columns)):
        row = []
        for column, cell in zip(LABEL_COLUMNS, cells):
            if not isinstance(cell, str):  # in-memory frames: 1, 1.0, np.int64(1), None
                cell = _as_text(cell)
            value = values.get(cell.strip(), -1)
            if value < 0:
                report(pos, column, f"label {cell!r} is not 0 or 1; fix: one-hot labels, 1 for the winner")
            row.append(value)
        if -1 not in row and sum(row) != 1:
            report(
                pos, _LABELS_COLUMN,
                f"labels {row} are not one-hot ({sum(row)} ones); fix: exactly one of "
                f"{', '.join(LABEL_COLUMNS)} must be 1",
            )
        rows.append(row)
    return rows


# -- teacher probabilities (distillation) -------------------------------------------------------

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
    problems: dict[int, list[Problem]] = {}  # row position -> its problems (ordered by row)

    def report(pos: int, column: str, reason: str) -> None:
        problems.setdefault(pos, []).append(Problem(_row_label(ids[pos], pos), column, reason))

    ids = [_as_text(x) for x in raw["id"].tolist()]
    _check_ids(ids, report)
    values = np.full((len(raw), len(LABEL_COLUMNS)), np.nan)  # (n, 3); NaN where a cell is bad
    for k, column in enumerate(LABEL_COLUMNS):
        for pos, cell in enumerate(raw[column].tolist()):
            try:
                values[pos, k] = _parse_probability(cell)
            except ValueError as err:
                report(pos, column, str(err))
    sums = values.sum(axis=1)  # NaN for rows with a bad cell: those are reported already
    for pos in np.flatnonzero(np.abs(sums - 1.0) > TEACHER_SUM_TOLERANCE):
        report(
            int(pos), _LABELS_COLUMN,
            f"probabilities sum to {sums[pos]:.6g}, not 1 (tolerance {TEACHER_SUM_TOLERANCE}); fix: write "
            f"normalized probabilities (softmax outputs) for {', '.join(LABEL_COLUMNS)}",
        )
    if problems:
        bad = sorted(problems)
        raise DataValidationError(
            path,
            f"{path}: {len(bad)} of {len(raw)} teacher rows are invalid; fix the rows listed below "
            "(distill.teacher_csv needs one probability row per id).",
            [p for pos in bad for p in problems[pos]],
        )
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=str)})
    normalized = values / sums[:, None]  # exact sums of 1 (up to float rounding) after the tolerance check
    for k, column in enumerate(LABEL_COLUMNS):
        frame[column] = normalized[:, k].astype(np.float64)
    return frame


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
            "pref_core.data.read_teacher_probs(distill.teacher_csv)"
        )
    teacher_ids = teacher["id"].astype(str)
    if teacher_ids.duplicated().any():
        repeated = sorted(set(teacher_ids[teacher_ids.duplicated()]))[:5]
        raise ValueError(
            f"attach_teacher_probs: the teacher repeats ids (first {repeated}); read it with "
            "pref_core.data.read_teacher_probs, which rejects repeated ids"
        )
    lookup = dict(zip(teacher_ids, teacher[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64).tolist()))
    placeholder = [1.0 / len(LABEL_COLUMNS)] * len(LABEL_COLUMNS)
    found = [lookup.get(str(row_id)) for row_id in dataset["id"]]
    # Attaching twice (a new teacher) replaces the old columns instead of failing on the name.
    stale = [c for c in ("teacher_probs", "has_teacher") if c in dataset.column_names]
    if stale:
        dataset = dataset.remove_columns(stale)
    dataset = dataset.add_column(
        "teacher_probs", [placeholder if probs is None else probs for probs in found],
        feature=datasets.List(datasets.Value("float64")),
    )
    return dataset.add_column(
        "has_teacher", [probs is not None for probs in found], feature=datasets.Value("bool")
    )


def _read_teacher_table(path: Path) -> pd.DataFrame:
    """The teacher file as a frame with the TEACHER_COLUMNS, raising DataValidationError for file-level problems."""
    fix_path = "fix: check distill.teacher_csv"
    if not path.exists():
        raise _fail(path, f"file not found; {fix_path}")
    if not path.is_file():
        raise _fail(path, "not a regular file (a folder?); fix: point distill.teacher_csv to the file itself")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            # Text cells, as in read_arena_csv: "NA" or "" stay text and are reported, never guessed.
            frame = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False, na_filter=False)
    except UnicodeDecodeError as err:
        raise _fail(path, f"not UTF-8 ({err.reason} at byte {err.start}); fix: re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise _fail(path, "file is empty; fix: write a header line (id, winner_model_a, ...) and rows") from None
    except pd.errors.ParserError as err:
        raise _fail(path, f"not a well-formed CSV: {err}; fix: check the quoting of that line") from None
    except (OSError, ValueError) as err:  # an unreadable or corrupt parquet file
        raise _fail(path, f"cannot be read ({err}); fix: write it again with pandas to_parquet or to_csv") from None
    # pandas renames a repeated header column "x" to "x.1": which copy is meant would be a guess.
    repeated = [c for c in TEACHER_COLUMNS if f"{c}.1" in frame.columns]
    if repeated:
        raise _fail(path, f"the header repeats column(s) {repeated}; fix: keep one column of each name")
    missing = [c for c in TEACHER_COLUMNS if c not in frame.columns]
    if missing:
        raise _fail(
            path,
            f"missing required column(s) {missing}; found columns {list(frame.columns)}; fix: a teacher file "
            f"needs {list(TEACHER_COLUMNS)} (probabilities per train id)",
        )
    if frame.empty:
        raise _fail(path, "the file has a header but no rows; fix: write one row per train id")
    return frame[list(TEACHER_COLUMNS)].reset_index(drop=True)


def _parse_probability(cell: object) -> float:
    """One teacher cell as a probability in [0, 1]; ValueError saying what is wrong otherwise."""
    text = cell if isinstance(cell, str) else _as_text(cell)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number; fix: write the probability as a decimal such as 0.25") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number; fix: write a probability in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is outside [0, 1]; fix: write probabilities, not logits")
    return value
