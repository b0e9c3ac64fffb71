"""Token-budget batches for prediction: rows sorted longest first, packed so that rows x padded length fits a budget.

A fixed number of rows per batch wastes the GPU on short rows and runs out of memory on long ones; a budget of
padded tokens (``--max-batch-tokens``) holds the work per batch about constant. Rows go longest first, so each batch
is padded to its first row's length and little is wasted on padding.

The first batch is the peak: it is the widest, and every later batch holds at most as many padded tokens as it does
(the budget is lowered to the first batch's own size, a loss of less than one row of the widest length). Memory that
grows with rows x width (activations) or rows x width^2 (eager attention scores) is then highest in the first batch,
so an out-of-memory error shows in seconds, not hours into a run.

Example: lengths [3, 9, 5, 9, 2, 4], budget 20 tokens. Longest first: rows 1, 3 (9 tokens), 2 (5), 5 (4), 0 (3),
4 (2). The first batch is rows [1, 3] at width 9 (18 tokens, and a third row would make 27), so every batch gets at
most 18 tokens: [2, 5, 0] at width 5 (15; a fourth row would make 20 > 18), then [4] at width 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pref_core.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    """Batches of row indices (positions in the caller's rows), in the order to run them.

    `batches[k]` holds the original indices of batch k's rows, longest first; `widths[k]` is the length the batch is
    padded to. Each row appears in exactly one batch, so writing each batch's outputs at its indices
    (`merge`) restores the caller's row order.
    """

    batches: tuple[np.ndarray, ...]
    widths: tuple[int, ...]
    max_batch_tokens: int  # the budget asked for
    batch_tokens: int  # the budget every batch keeps to: the first batch's padded tokens (<= max_batch_tokens)

    @property
    def n_rows(self) -> int:
        return int(sum(len(b) for b in self.batches))

    def padded_tokens(self) -> list[int]:
        """rows x width of each batch."""
        return [len(b) * w for b, w in zip(self.batches, self.widths)]

    def shapes(self) -> list[tuple[int, int]]:
        """(rows, width) of each batch, in run order: what the time projection (predict.budget) prices."""
        return [(len(b), w) for b, w in zip(self.batches, self.widths)]

    def merge(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """One output array (n_rows, ...) in the caller's row order, from one array per batch (its rows in the
        batch's order, as `batches[k]` lists them)."""
        if len(outputs) != len(self.batches):
            raise ValueError(f"merge needs one output per batch: {len(self.batches)} batches, {len(outputs)} outputs")
        first = np.asarray(outputs[0])
        merged = np.empty((self.n_rows, *first.shape[1:]), dtype=first.dtype)
        for k, (rows, out) in enumerate(zip(self.batches, outputs)):
            out = np.asarray(out)
            if out.shape[0] != len(rows):
                raise ValueError(f"batch {k} has {len(rows)} rows but its output has {out.shape[0]}")
            merged[rows] = out
        return merged

    def to_dict(self) -> dict:
        """A summary to log (not the row indices): budget, batches, rows, padded tokens, the first batch's shape."""
        return {
            "max_batch_tokens": self.max_batch_tokens,
            "batch_tokens": self.batch_tokens,
            "batches": len(self.batches),
            "rows": self.n_rows,
            "padded_tokens": int(sum(self.padded_tokens())),
            "first_batch": {
                "rows": len(self.batches[0]) if self.batches else 0,
                "width": self.widths[0] if self.widths else 0,
            },
        }


def padded_width(length: int, pad_to_multiple_of: Optional[int] = None) -> int:
    """The width a batch whose longest row has `length` tokens is padded to (PreferenceCollator's rule)."""
    if pad_to_multiple_of:
        return -(-int(length) // pad_to_multiple_of) * pad_to_multiple_of
    return int(length)


def plan_token_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_rows: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
) -> BatchPlan:
    """Pack rows of token `lengths` (n,) into batches of at most `max_batch_tokens` padded tokens, longest first.

    Rows of equal length keep their input order (stable sort). `max_rows` caps the rows per batch (the budget alone
    would put hundreds of short rows in one batch); `pad_to_multiple_of` (8 on GPUs) rounds each batch's width up as
    the collator does. Raises ValueError, naming the fix, when the budget cannot hold the longest row.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one token count per row, got shape {lengths.shape}")
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens={max_batch_tokens}: must be a positive number of tokens")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows={max_rows}: must be at least 1 (or None for no cap)")
    if lengths.size and lengths.min() < 1:
        row = int(np.argmin(lengths))
        raise ValueError(f"row {row} has {int(lengths[row])} tokens; every row needs at least one token")
    if lengths.size == 0:
        return BatchPlan((), (), int(max_batch_tokens), 0)
    order = np.argsort(-lengths, kind="stable")  # longest first, ties in input order
    widest = padded_width(lengths[order[0]], pad_to_multiple_of)
    if widest > max_batch_tokens:
        raise ValueError(
            f"max_batch_tokens={max_batch_tokens} is smaller than the longest row (row {int(order[0])}: "
            f"{int(lengths[order[0]])} tokens, padded to {widest}); raise max_batch_tokens to at least {widest} "
            "or lower max_length"
        )
    first_rows = max_batch_tokens // widest if max_rows is None else min(max_rows, max_batch_tokens // widest)
    batch_tokens = first_rows * widest  # every batch keeps to the first batch's size: the first is the peak
    batches: list[np.ndarray] = []
    widths: list[int] = []
    start = 0
    while start < len(order):
        width = padded_width(lengths[order[start]], pad_to_multiple_of)
        rows = batch_tokens // width
        if max_rows is not None:
            rows = min(rows, max_rows)
        batches.append(order[start : start + rows])
        widths.append(width)
        start += rows
    return BatchPlan(tuple(batches), tuple(widths), int(max_batch_tokens), int(batch_tokens))


def plan_fixed_batches(lengths: Sequence[int], batch_size: int, pad_to_multiple_of: Optional[int] = None) -> BatchPlan:
    """Today's prediction batches as a plan: `batch_size` rows each, longest first (predict.inference's order).

    For comparing the two (bench/, tests); `max_batch_tokens` and `batch_tokens` hold the largest batch's size.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    order = np.argsort(-lengths, kind="stable")
    batches = tuple(order[i : i + batch_size] for i in range(0, len(order), batch_size))
    widths = tuple(padded_width(lengths[b[0]], pad_to_multiple_of) for b in batches)
    peak = max((len(b) * w for b, w in zip(batches, widths)), default=0)
    return BatchPlan(batches, widths, peak, peak)


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    max_batch_tokens: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
) -> BatchPlan:
    """The batches prediction runs, longest first: `batch_size` rows each, or with `max_batch_tokens`
    (train.eval_max_batch_tokens, --max-batch-tokens) at most that many padded tokens and `batch_size` rows.

    Raises ValueError naming the row, its length and the fix when the budget cannot hold the longest row.
    """
    if max_batch_tokens is None:
        return plan_fixed_batches(lengths, batch_size, pad_to_multiple_of)
    return plan_token_batches(lengths, max_batch_tokens, max_rows=batch_size, pad_to_multiple_of=pad_to_multiple_of)


class TokenBudgetError(UserError, ValueError):
    """A token budget that cannot hold the longest row: one line, exit code 2, before any model loads."""


def check_token_budget(
    lengths: Sequence[int],
    max_batch_tokens: Optional[int],
    pad_to_multiple_of: Optional[int] = None,
    row_ids: Optional[Sequence] = None,
    option: str = "--max-batch-tokens",
    length_option: str = "--max-length",
) -> None:
    """Raise TokenBudgetError, in one line naming the longest row (its id from `row_ids`), its length and the fix,
    when `max_batch_tokens` cannot hold it; nothing without a budget. Call it after encoding, before loading a model."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_batch_tokens is None:
        return
    if max_batch_tokens < 1:
        raise TokenBudgetError(f"{option} {max_batch_tokens}: must be a positive number of tokens, e.g. 16384")
    if lengths.size == 0:
        return
    row = int(np.argmax(lengths))  # the first of the longest
    widest = padded_width(lengths[row], pad_to_multiple_of)
    if widest > max_batch_tokens:
        name = f"id {row_ids[row]}" if row_ids is not None else f"row {row}"
        padded = f", padded to {widest}" if widest != lengths[row] else ""
        raise TokenBudgetError(
            f"{option} {max_batch_tokens} is smaller than the longest row "
            f"({name}: {int(lengths[row])} tokens{padded}); "
            f"raise it to at least {widest} or lower {length_option}"
        )
