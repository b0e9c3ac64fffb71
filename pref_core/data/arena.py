"""Ingest of Kaggle-format arena CSVs, with validation that reports every problem at once.

A cell such as ``prompt`` holds a JSON list of turns (``["hi", "and then?"]``, entries may be JSON
``null``). It is parsed with ``json.loads`` only: the seed notebook and the 1st-place code used ``eval``
with a bare ``except``, which runs whatever the file contains and silently mangles cells it cannot parse.

Two kinds of problems (`pref_core.data.problems`):
- file-level (missing file, not UTF-8, missing columns, ...): nothing can be read, so
  `DataValidationError` is raised right away;
- row-level (bad JSON, unequal turn counts, bad labels, duplicated ids, ...): all of them are collected;
  if the share of bad rows is above ``data.max_bad_fraction`` the error lists every one, otherwise the
  bad rows are dropped and returned in `IngestResult.rejected` (never dropped silently).
Teacher files for distillation are read by `pref_core.data.teachers`, extra training data by `pref_core.data.extra`.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping, Optional, Union

import pandas as pd

from pref_core.data.labels import ALL_LABELS_COLUMN, LABEL_COLUMNS, MODEL_COLUMNS, TURN_COLUMNS
from pref_core.data.problems import DataValidationError, Problem, ProblemCollector, file_error

REQUIRED_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(  # read-only: no module-level mutable state
    {"train": ("id", *TURN_COLUMNS, *LABEL_COLUMNS), "test": ("id", *TURN_COLUMNS)}
)

_TURNS_FIX = 'the cell must be a JSON list of strings such as ["hi"]'
# A lone UTF-16 surrogate can only come from a JSON escape (the file itself is valid UTF-8).
_SURROGATE = re.compile("[\ud800-\udfff]")


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
            raise ValueError(f"turn {i} is a JSON {type(turn).__name__}, not a string or null; fix: {_TURNS_FIX}")
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
        raise _frame_error(source, f"missing required column(s) {missing}; fix: a {kind} frame needs {list(required)}")
    present = [c for c in LABEL_COLUMNS if c in raw.columns]
    if kind == "test" and present:
        raise _frame_error(source, f"a test frame must not carry label columns, found {present}; fix: drop them")
    if raw.empty:
        raise _frame_error(source, "no rows")
    return _validate(raw.reset_index(drop=True), kind, max_bad_fraction, source=source, path=None)


def _frame_error(source: str, reason: str) -> DataValidationError:
    return DataValidationError(None, f"{source}: cannot use this frame.", [Problem(None, None, reason)])


def _check_arguments(kind: str, max_bad_fraction: float) -> None:
    if kind not in REQUIRED_COLUMNS:
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"data.max_bad_fraction must lie in [0, 1], got {max_bad_fraction!r}")


def _validate(raw: pd.DataFrame, kind: str, max_bad_fraction: float, source: str, path: Optional[Path]) -> IngestResult:
    """Row-level checks of a frame that has the required columns; applies the bad-row policy."""
    ids = [cell_text(x) for x in raw["id"].tolist()]
    collector = ProblemCollector.for_ids(ids)
    check_ids(ids, collector.report)
    parsed = {column: _parse_column(raw[column].tolist(), column, collector.report) for column in TURN_COLUMNS}
    _check_turn_counts(parsed, collector.report)
    labels = _check_labels(raw, collector.report) if kind == "train" else None
    collector.check_bad_share(len(raw), max_bad_fraction, path, source)
    frame = _build_frame(raw, ids, parsed, labels)[collector.keep_mask(len(raw))].reset_index(drop=True)
    if labels is not None:
        frame = frame.astype({**{c: "int64" for c in LABEL_COLUMNS}, "label": "int64"})
    return IngestResult(
        frame=frame, rejected=collector.rejected_frame(), n_read=len(raw), n_kept=len(frame), n_rejected=collector.n_bad
    )


def _build_frame(
    raw: pd.DataFrame, ids: list[str], parsed: dict[str, list], labels: Optional[list[list[int]]]
) -> pd.DataFrame:
    """Every row in the ingested layout (turn lists, int labels, ``label``); bad rows still in it."""
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=str)})
    for column in MODEL_COLUMNS:
        if column in raw.columns:
            frame[column] = pd.Series([cell_text(x) for x in raw[column].tolist()], dtype=str)
    for column in TURN_COLUMNS:
        frame[column] = pd.Series(parsed[column], dtype=object)
    if labels is not None:
        for k, column in enumerate(LABEL_COLUMNS):
            frame[column] = [row[k] for row in labels]
        frame["label"] = [row.index(1) if row.count(1) == 1 else -1 for row in labels]
    return frame


def write_rejected(rejected: pd.DataFrame, path: Union[str, Path]) -> Path:
    """Write the rejected-rows table (id, column, reason) as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rejected.to_csv(path, index=False)
    return path


# -- file level ---------------------------------------------------------------------------------


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    """Read the CSV as text cells, raising DataValidationError for any file-level problem."""
    header = _read_header(path, _read_utf8_bytes(path))
    _check_header(path, header, kind)
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
        raise file_error(path, f"not a well-formed CSV: {err}; fix: check the quoting of that line") from None
    if frame.empty:
        raise file_error(path, "the file has a header but no data rows; fix: export the rows too")
    return frame[[c for c in frame.columns if c in REQUIRED_COLUMNS[kind] or c in MODEL_COLUMNS]]


def _read_utf8_bytes(path: Path) -> bytes:
    """The file's bytes, checked to be there, non-empty and strict UTF-8."""
    if not path.exists():
        raise file_error(path, "file not found; fix: check data.train_csv / data.test_csv")
    if not path.is_file():
        raise file_error(path, "not a regular file (a folder?); fix: point to the CSV file itself")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise file_error(path, f"cannot be read ({err.strerror}); fix: check its permissions") from None
    if not data or data.isspace():
        raise file_error(path, "file is empty; fix: export the CSV again with a header line and rows")
    try:
        data.decode("utf-8")  # strict: report the first bad byte instead of guessing a codec
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise file_error(
            path,
            f"not UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start} (line {line}) is invalid "
            f"({err.reason}); fix: re-save the file as UTF-8 (for example pandas to_csv(encoding='utf-8'))",
        ) from None
    return data


def _read_header(path: Path, data: bytes) -> list[str]:
    """The column names of the first line (a UTF-8 BOM dropped); a repeated name is an error."""
    end = data.find(b"\n")
    header_line = data[: end if end >= 0 else len(data)].decode("utf-8").removeprefix("\ufeff").rstrip("\r")
    header = next(csv.reader([header_line]), [])
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise file_error(path, f"the header repeats column(s) {duplicated}; fix: keep one column of each name")
    return header


def _check_header(path: Path, header: list[str], kind: str) -> None:
    """The required columns of `kind` are there, and a test file carries no labels."""
    required = REQUIRED_COLUMNS[kind]
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        if kind == "train" and all(c in missing for c in LABEL_COLUMNS):
            hint = " (it has no label columns: is it a test file? then read it with kind='test')"
        raise file_error(
            path,
            f"missing required column(s) {missing} for a {kind} file{hint}; found columns {header}; "
            f"fix: a {kind} file needs {list(required)}",
        )
    present = [c for c in LABEL_COLUMNS if c in header]
    if kind == "test" and present:
        raise file_error(
            path,
            f"a test file must not carry label columns, found {present}; fix: read it as kind='train' "
            "or drop those columns",
        )


# -- row level ----------------------------------------------------------------------------------


def cell_text(value: object) -> str:
    """A cell of an in-memory frame as text: numbers become strings, missing values empty."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def check_ids(ids: list[str], report) -> None:
    """Report empty and repeated ids (every row of a repeated id) as ``report(pos, "id", reason)``."""
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
                    pos,
                    "id",
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
                    pos,
                    column,
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
                cell = cell_text(cell)
            value = values.get(cell.strip(), -1)
            if value < 0:
                report(pos, column, f"label {cell!r} is not 0 or 1; fix: one-hot labels, 1 for the winner")
            row.append(value)
        if -1 not in row and sum(row) != 1:
            report(
                pos,
                ALL_LABELS_COLUMN,
                f"labels {row} are not one-hot ({sum(row)} ones); fix: exactly one of "
                f"{', '.join(LABEL_COLUMNS)} must be 1",
            )
        rows.append(row)
    return rows
