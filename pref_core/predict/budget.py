"""The time budget of a prediction run (``--time-limit 9h``): project the whole file's time from its first batches, and
decide what to lower so that it fits.

Projection. The batches are planned before any runs (predict.batching), so the shape (rows, width) of every batch is
known in advance; only the seconds per unit of work are measured. A batch's work is priced as

    rows x width x (1 + width / width_scale)

padded tokens for the layers that cost the same per token (projections, MLP), plus attention, whose cost per token
grows with the width. `attention_width_scale` gives width_scale from the model's shape by FLOPs: about 24k tokens for
Gemma-2-9B and 27k for Llama-3-8B, so a 2k-token row costs ~8% more per token than a short one; for the tiny test
models it is a few hundred tokens and attention dominates.

The bias, and how it is handled: batches run longest first, so the first measured batches are the ones with the most
expensive tokens. Dividing their seconds by their padded tokens alone and multiplying by the file's tokens
(`Projection.by_tokens_s`) over-estimates the total, by up to the attention share; pricing by the formula above
removes that part of the bias, and the token-only figure is kept beside it. Neither prices per-row costs (collation,
the head, kernel launches), which weigh on the late batches of many short rows: on a tiny CPU model the width-priced
projection from 5 batches came out 14% short in one run and 1% long in another, the token-only one 6% and 25% long.
So keep a margin, project again as batches finish, and stop at the limit whatever the projection said. The first
batch also pays one-time costs (kernel selection, allocator growth); it is left out of the rate when later batches
were measured.

Decision (``--fit-time``): if the projection does not fit the time left (limit less elapsed, less a reserve for
writing the submission, with a safety margin), lower the cost in a fixed order: swap TTA off first (half the work, the
smaller loss of accuracy), then a shorter max_length, step by step down to a floor. `decide_settings` returns the first
setting that fits, or the floor with ``fits=False``, and says why in words.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from pref_core.predict.batching import plan_token_batches

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds of a time limit written with units: "9h" -> 32400, "90m" -> 5400, "3600s", "8h30m" -> 30600, "2.5h".

    Raises ValueError naming the value and the accepted forms (a bare number is refused: hours or seconds?).
    """
    compact = str(text).strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    units = [unit for _, unit in parts]
    if not compact or "".join(f"{n}{u}" for n, u in parts) != compact or len(set(units)) != len(units):
        raise ValueError(f"time limit {text!r}: write a number with a unit h, m or s, e.g. 9h, 90m, 3600s or 8h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"time limit {text!r}: must be more than zero, e.g. 9h")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds in words for a log line: 5400 -> "1.5 h", 450 -> "7.5 min", 42 -> "42 s"."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


# -- pricing and projection ------------------------------------------------------------------------------------------


def attention_width_scale(
    hidden_size: int,
    intermediate_size: int,
    num_attention_heads: int,
    num_key_value_heads: Optional[int] = None,
    head_dim: Optional[int] = None,
) -> float:
    """The width (tokens) at which a token's attention costs as many FLOPs as its projections and MLP.

    Per token and layer: projections and MLP 2 x (hidden x q + 2 x hidden x kv + q x hidden + 3 x hidden x
    intermediate) FLOPs, attention 2 x 2 x width x q (scores and the weighted sum over every key, as eager attention
    computes them), with q = heads x head_dim and kv = kv_heads x head_dim. Gemma-2-9B (3584, 14336, 16 heads, 8 kv
    heads, head_dim 256): 24,192; Llama-3-8B (4096, 14336, 32, 8): 26,624.
    """
    head_dim = head_dim or hidden_size // num_attention_heads
    q = num_attention_heads * head_dim
    kv = (num_key_value_heads or num_attention_heads) * head_dim
    dense = 2 * hidden_size * q + 2 * hidden_size * kv + 3 * hidden_size * intermediate_size
    return dense / (2 * q)


def batch_cost(rows: int, width: int, width_scale: float = math.inf) -> float:
    """Work of one batch in token units: rows x width x (1 + width / width_scale) (see the module docstring)."""
    return rows * width * (1.0 + width / width_scale)


@dataclass(frozen=True)
class Projection:
    """The projected time of a run from its first measured batches (seconds)."""

    measured_batches: int
    elapsed_s: float  # seconds of the measured batches
    total_s: float  # projected seconds of every batch, measured ones included
    by_tokens_s: float  # the same projected by padded tokens alone (longest batches measured first: too long)
    seconds_per_unit: float  # the measured rate, per batch_cost unit

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.total_s - self.elapsed_s)

    def in_words(self) -> str:
        return (
            f"projected {format_duration(self.total_s)} for the whole file from {self.measured_batches} "
            f"batch(es) in {format_duration(self.elapsed_s)} ({format_duration(self.by_tokens_s)} by tokens "
            "alone, which over-prices the shorter rows still to come)"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "remaining_s": self.remaining_s}


def project_time(
    shapes: Sequence[tuple[int, int]], seconds: Sequence[float], width_scale: float = math.inf, skip_first: bool = True
) -> Projection:
    """Project the whole run from the first len(`seconds`) batches of `shapes` (every batch's (rows, width), in run
    order: BatchPlan.shapes(), one plan after another when a device runs both views).

    The rate is seconds per batch_cost unit over the measured batches, without the first (warm-up) when more than
    one was measured and `skip_first`.
    """
    if not seconds:
        raise ValueError("project_time needs the seconds of at least one measured batch")
    if len(seconds) > len(shapes):
        raise ValueError(f"{len(seconds)} measured batches but only {len(shapes)} planned")
    if min(seconds) < 0:
        raise ValueError(f"measured batch seconds must not be negative, got {min(seconds)}")
    first = 1 if skip_first and len(seconds) > 1 else 0
    measured = shapes[first : len(seconds)]
    rate = sum(seconds[first:]) / sum(batch_cost(r, w, width_scale) for r, w in measured)
    token_rate = sum(seconds[first:]) / sum(r * w for r, w in measured)
    elapsed = float(sum(seconds))
    later = shapes[len(seconds) :]
    total = elapsed + rate * sum(batch_cost(r, w, width_scale) for r, w in later)
    by_tokens = elapsed + token_rate * sum(r * w for r, w in later)
    return Projection(len(seconds), elapsed, float(total), float(by_tokens), float(rate))


# -- what to lower ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """What the budget may lower: swap TTA (both views) and the tokens per row."""

    tta_swap: bool
    max_length: int

    def in_words(self) -> str:
        return f"TTA {'on' if self.tta_swap else 'off'}, max_length {self.max_length}"


def remaining_seconds(
    setting: Setting,
    lengths: Sequence[int],
    seconds_per_unit: float,
    max_batch_tokens: int,
    *,
    max_rows: Optional[int] = None,
    width_scale: float = math.inf,
    n_devices: int = 1,
    pad_to_multiple_of: Optional[int] = None,
) -> float:
    """Seconds to predict the rows of token `lengths` (those not predicted yet) under `setting`, at a measured rate.

    A shorter max_length is priced as min(length, max_length) per row: an upper bound, since the seed truncation may
    cut a long row below max_length. TTA doubles the work; `n_devices` share it (the rows split across devices, or
    one view per device with TTA on two devices: the same wall time either way).
    """
    truncated = np.minimum(np.asarray(lengths, dtype=np.int64), setting.max_length)
    if truncated.size == 0:
        return 0.0
    plan = plan_token_batches(truncated, max(max_batch_tokens, int(truncated.max())), max_rows, pad_to_multiple_of)
    work = sum(batch_cost(r, w, width_scale) for r, w in plan.shapes())
    views = 2 if setting.tta_swap else 1
    return float(seconds_per_unit * work * views / max(1, n_devices))


@dataclass(frozen=True)
class BudgetDecision:
    """The setting to run with, whether it fits the limit, and the reason in words (written to submission.log)."""

    fits: bool
    tta_swap: bool
    max_length: int
    projected_s: float  # seconds still to run under the chosen setting
    available_s: float  # seconds left before the limit, less the reserve
    limit_s: float
    elapsed_s: float
    lowered: tuple[str, ...]  # what was lowered, in order: "tta_swap", "max_length"
    reason: str

    @property
    def setting(self) -> Setting:
        return Setting(self.tta_swap, self.max_length)

    def to_dict(self) -> dict:
        return {**asdict(self), "lowered": list(self.lowered)}

    @classmethod
    def from_dict(cls, data: dict) -> "BudgetDecision":
        return cls(**{**data, "lowered": tuple(data["lowered"])})


def candidate_settings(current: Setting, floor_max_length: int, length_step: int = 64) -> list[Setting]:
    """The settings to try, cheapest last: as it is; TTA off; then max_length lowered by `length_step` down to the
    floor (TTA off). Example: (TTA on, 2048), floor 1920, step 64 -> (on, 2048), (off, 2048), (off, 1984), (off, 1920).
    """
    if floor_max_length > current.max_length:
        raise ValueError(
            f"the max_length floor {floor_max_length} is above max_length {current.max_length}; "
            "lower the floor or raise max_length"
        )
    if length_step < 1:
        raise ValueError(f"length_step={length_step}: must be at least 1")
    out = [current]
    if current.tta_swap:
        out.append(Setting(False, current.max_length))
    length = current.max_length - length_step
    while length > floor_max_length:
        out.append(Setting(False, length))
        length -= length_step
    if floor_max_length < current.max_length:
        out.append(Setting(False, floor_max_length))
    return out


def decide_settings(
    current: Setting,
    seconds_at: Callable[[Setting], float],
    limit_s: float,
    elapsed_s: float,
    floor_max_length: int,
    *,
    length_step: int = 64,
    reserve_s: float = 600.0,
    margin: float = 0.10,
) -> BudgetDecision:
    """The first of `candidate_settings` whose projected seconds (`seconds_at(setting)`, e.g. `remaining_seconds`
    with the measured rate) fit: projected x (1 + margin) <= limit - elapsed - reserve.

    `reserve_s` keeps time to write the submission; `margin` absorbs the projection's error. When nothing fits, the
    cheapest setting (the floor) comes back with fits=False: the caller predicts what it can and gives the remaining
    rows the class prior, so a complete submission is written before the limit.
    """
    if limit_s <= 0 or elapsed_s < 0 or reserve_s < 0 or margin < 0:
        raise ValueError(
            f"limit_s must be > 0 and elapsed_s, reserve_s, margin >= 0; got limit_s={limit_s}, "
            f"elapsed_s={elapsed_s}, reserve_s={reserve_s}, margin={margin}"
        )
    available = limit_s - elapsed_s - reserve_s
    room = (
        f"the {format_duration(max(available, 0.0))} left of the {format_duration(limit_s)} limit "
        f"({format_duration(elapsed_s)} elapsed, {format_duration(reserve_s)} reserve, {margin:.0%} margin)"
    )
    results = []  # (setting, projected seconds, fits) of each setting tried, in order
    for setting in candidate_settings(current, floor_max_length, length_step):
        projected = float(seconds_at(setting))
        results.append((setting, projected, projected * (1 + margin) <= available))
        if results[-1][2]:
            break
    setting, projected, fits = results[-1]
    first = results[0]
    words = [
        f"projected {format_duration(first[1])} at {current.in_words()} {'fits' if first[2] else 'exceeds'} {room}"
    ]
    shown = [r for r in results[1:] if r[0].max_length == current.max_length or r is results[-1]]
    for tried, seconds, ok in shown:
        floor = " (the floor)" if not ok and tried.max_length == floor_max_length else ""
        words.append(f"{tried.in_words()}{floor}: {format_duration(seconds)}{' fits' if ok else ''}")
    if not fits:
        words.append("nothing fits: the rows still unpredicted when time runs out get the class prior")
    lowered = tuple(
        name
        for name, changed in (
            ("tta_swap", setting.tta_swap != current.tta_swap),
            ("max_length", setting.max_length != current.max_length),
        )
        if changed
    )
    return BudgetDecision(
        fits=fits,
        tta_swap=setting.tta_swap,
        max_length=setting.max_length,
        projected_s=projected,
        available_s=available,
        limit_s=limit_s,
        elapsed_s=elapsed_s,
        lowered=lowered,
        reason="; ".join(words),
    )
