"""Problems found in an input, collected so that one error reports all of them (torchtune's ConfigError way).

A `Problem` says where (row id and column; None for the file itself) and what is wrong with its fix: its
``reason`` reads ``<what>; fix: <how>``. Readers of row-based inputs (arena CSVs, chosen/rejected pairs,
teacher files) report each bad cell to a `ProblemCollector`, which keeps them in row order, applies the
bad-row policy (``data.max_bad_fraction``) and turns them into the rejected-rows table. A
`DataValidationError` prints a headline and then every problem, one per line (one problem: one line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from pref_core.errors import UserError

REJECTED_COLUMNS: tuple[str, str, str] = ("id", "column", "reason")


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


class DataValidationError(UserError, ValueError):
    """The input cannot be used as it is; the message lists every problem with its fix.

    `path` is the file (None for an in-memory frame); `problems` holds all of them.
    """

    def __init__(self, path: Union[str, Path, None], headline: str, problems: list[Problem]):
        self.path = None if path is None else Path(path)
        self.problems = list(problems)
        self.headline = headline
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(f"{headline} {self.problems[0]}")
        else:
            super().__init__("\n".join([headline, *(f"  - {p}" for p in self.problems)]))


def file_error(path: Path, reason: str, column: Optional[str] = None) -> DataValidationError:
    """The error for a file of which nothing can be used (missing, unreadable, wrong columns, ...)."""
    return DataValidationError(path, f"{path}: cannot use this file.", [Problem(None, column, reason)])


def row_label(row_id: str, pos: int) -> str:
    """The row id a problem shows: the id itself, or the data row number when the id is empty."""
    # Data row numbers (1 = first row after the header) name rows that have no usable id.
    return row_id if row_id.strip() else f"<empty, data row {pos + 1}>"


class ProblemCollector:
    """Row-level problems of one input, kept per row in row order.

    `name_row(pos)` gives the row id shown for the row at `pos` (a position, or a line number);
    `for_ids` names rows by their id column. Pass `report` to the checks: ``report(pos, column, reason)``.
    """

    def __init__(self, name_row: Callable[[int], str]):
        self._name_row = name_row
        self._by_row: dict[int, list[Problem]] = {}

    @classmethod
    def for_ids(cls, ids: Sequence[str]) -> "ProblemCollector":
        return cls(lambda pos: row_label(ids[pos], pos))

    def report(self, pos: int, column: str, reason: str) -> None:
        self._by_row.setdefault(pos, []).append(Problem(self._name_row(pos), column, reason))

    @property
    def bad_rows(self) -> list[int]:
        """Positions of the rows with at least one problem, in order."""
        return sorted(self._by_row)

    @property
    def n_bad(self) -> int:
        """Rows, not problems: one row can have several."""
        return len(self._by_row)

    def problems(self) -> list[Problem]:
        return [p for pos in self.bad_rows for p in self._by_row[pos]]

    def keep_mask(self, n_rows: int) -> np.ndarray:
        """(n_rows,) bool: True for the rows without problems (positions must be 0..n_rows-1)."""
        keep = np.ones(n_rows, dtype=bool)
        keep[self.bad_rows] = False
        return keep

    def rejected_frame(self) -> pd.DataFrame:
        """The rejected-rows table: one line (id, column, reason) per problem."""
        return pd.DataFrame(
            [(p.row_id, p.column, p.reason) for p in self.problems()], columns=list(REJECTED_COLUMNS), dtype=str
        )

    def error(self, path: Union[str, Path, None], headline: str) -> DataValidationError:
        return DataValidationError(path, headline, self.problems())

    def check_bad_share(
        self, n_read: int, max_bad_fraction: float, path: Union[str, Path, None], source: str, noun: str = "rows"
    ) -> None:
        """The bad-row policy: raise when the share of bad rows is above `max_bad_fraction`, or when no row is
        left; otherwise the bad rows are the caller's to drop (and to return as `rejected_frame`)."""
        n_bad = self.n_bad
        if n_bad and n_bad / n_read > max_bad_fraction:
            needed = math.ceil(n_bad / n_read * 100) / 100
            raise self.error(
                path,
                f"{source}: {n_bad} of {n_read} {noun} are invalid ({n_bad / n_read:.1%}), more than the "
                f"allowed data.max_bad_fraction={max_bad_fraction}. Fix the {noun} listed below, or set "
                f"data.max_bad_fraction={needed} or higher (e.g. --set data.max_bad_fraction={needed}) "
                "to drop them into a rejected-rows file.",
            )
        if n_bad == n_read:
            raise self.error(path, f"{source}: all {n_read} {noun} are invalid; nothing left to use.")
