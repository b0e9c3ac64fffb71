"""The time limit of a prediction run (``--time-limit 9h``, ``--fit-time``): measure the first batches, project the
rest, lower the cost when it does not fit, and stop in time whatever the projection said.

`TimeKeeper` is told every finished batch: its shape (rows, padded width), its seconds and the worker that ran it.
Once `check_after` batches are measured (each worker's first is left out: it pays for kernel selection and allocator
growth), it prices the batches still to run (predict.budget.batch_cost: rows x width x (1 + width / width_scale)) at
the measured seconds per unit, shared by the workers, and compares the projection with the time left: the limit less
the time since the run started (reading, hashing and loading count), less a reserve for writing the submission, with
a margin for the projection's error. With `fit`, predict.budget.decide_settings picks the first setting that fits (TTA
off first, then max_length lowered in steps down to a floor); the check is repeated after every tenth of the batches
and only ever lowers further. `should_stop` ends the dispatch when the next batch would end past the limit less the
reserve, so the caller always writes a complete submission (rows never predicted get the class prior) in time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from pref_core.predict.batching import padded_width, plan_fixed_batches, plan_token_batches
from pref_core.predict.budget import BudgetDecision, Setting, batch_cost, decide_settings, format_duration

DEFAULT_RESERVE_S = 600.0  # at most this long is kept back for writing the submission
RESERVE_SHARE = 0.05  # ... and at most this share of the limit (a 10-minute limit keeps 30 s)


def default_reserve(limit_s: float) -> float:
    """Seconds kept back from `limit_s` for writing the submission: 5% of the limit, at most 10 minutes."""
    return min(DEFAULT_RESERVE_S, RESERVE_SHARE * limit_s)


@dataclass(frozen=True)
class TimeLimit:
    """What ``--time-limit``, ``--fit-time``, ``--max-length-floor`` and ``--time-reserve`` asked for."""

    limit_s: float
    started_at: float  # time.time() when the run began
    fit: bool = False
    floor_max_length: Optional[int] = None  # None: half of max_length
    reserve_s: Optional[float] = None  # None: default_reserve(limit_s)
    margin: float = 0.10
    check_after: int = 5  # batches measured before the first projection
    length_step: int = 64

    @property
    def reserve(self) -> float:
        return default_reserve(self.limit_s) if self.reserve_s is None else self.reserve_s

    def floor_for(self, max_length: int) -> int:
        floor = self.floor_max_length if self.floor_max_length is not None else max_length // 2
        return min(floor, max_length)


def plan_cost(
    lengths: Sequence[int],
    batch_size: int,
    max_batch_tokens: Optional[int],
    pad_to_multiple_of: Optional[int] = None,
    width_scale: float = math.inf,
) -> float:
    """The batch_cost units of predicting rows of token `lengths` with prediction's batches (a budget of padded
    tokens, or `batch_size` rows each)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return 0.0
    if max_batch_tokens is None:
        plan = plan_fixed_batches(lengths, batch_size, pad_to_multiple_of)
    else:
        widest = padded_width(int(lengths.max()), pad_to_multiple_of)
        plan = plan_token_batches(lengths, max(max_batch_tokens, widest), batch_size, pad_to_multiple_of)
    return float(sum(batch_cost(r, w, width_scale) for r, w in plan.shapes()))


@dataclass
class Check:
    """One projection: what was measured, what it projects, and the decision (with `fit`) or None."""

    elapsed_s: float
    measured_batches: int
    seconds_per_unit: float
    remaining_s: float  # projected seconds still to run at the current setting (all workers together)
    projected_total_s: float  # elapsed + remaining
    fits: bool
    decision: Optional[BudgetDecision]

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "decision"}
        out["decision"] = self.decision.to_dict() if self.decision else None
        return out


@dataclass
class TimeKeeper:
    """See the module docstring. `clock`: time.time (a test passes a fake one)."""

    limit: TimeLimit
    width_scale: float = math.inf
    clock: Callable[[], float] = time.time
    measured: list[tuple[int, int, float]] = field(default_factory=list)  # (rows, width, seconds), warm-ups left out
    warmups: list[tuple[int, int, float]] = field(default_factory=list)  # each worker's first batch
    _seen_workers: set = field(default_factory=set)
    checks: list[Check] = field(default_factory=list)
    _next_check_at: int = 0
    predict_started_at: Optional[float] = None
    stopped_at: Optional[float] = None  # when should_stop first said stop

    # -- time ----------------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.clock() - self.limit.started_at

    def hard_stop(self) -> float:
        """Seconds after the start at which no batch may still be running: the limit less the reserve."""
        return self.limit.limit_s - self.limit.reserve

    def time_left(self) -> float:
        return self.hard_stop() - self.elapsed()

    # -- measurements --------------------------------------------------------------------------------------------

    def start_predicting(self) -> None:
        if self.predict_started_at is None:
            self.predict_started_at = self.clock()

    def record(self, worker: int, shape: tuple[int, int], seconds: float) -> None:
        """A finished batch; each worker's first is its warm-up and is not measured."""
        batch = (int(shape[0]), int(shape[1]), float(seconds))
        if worker not in self._seen_workers:
            self._seen_workers.add(worker)
            self.warmups.append(batch)
            return
        self.measured.append(batch)

    def rate(self, warmups: bool = False) -> Optional[float]:
        """Measured seconds per batch_cost unit (one worker's), or None before any batch was measured; with
        `warmups`, the warm-up batches stand in until a measured one exists (slower: safer for stopping)."""
        batches = self.measured or (self.warmups if warmups else [])
        units = sum(batch_cost(r, w, self.width_scale) for r, w, _ in batches)
        return sum(s for _, _, s in batches) / units if units else None

    def due(self, finished_batches: int, total_batches: int) -> bool:
        """True when a projection is due: `check_after` batches measured, then after every tenth of the batches."""
        if len(self.measured) < self.limit.check_after or finished_batches < self._next_check_at:
            return False
        self._next_check_at = finished_batches + max(self.limit.check_after, total_batches // 10)
        return True

    # -- decisions -----------------------------------------------------------------------------------------------

    def check(self, current: Setting, seconds_at: Callable[[Setting], float]) -> Check:
        """Project the rest at `current` (seconds_at: seconds still to run under a setting at the measured rate,
        the workers sharing the work) and, with `fit`, decide the setting to go on with."""
        elapsed = self.elapsed()
        remaining = float(seconds_at(current))
        left = self.time_left()
        fits = remaining * (1 + self.limit.margin) <= left
        decision = None
        if self.limit.fit:
            decision = decide_settings(
                current,
                seconds_at,
                self.limit.limit_s,
                elapsed,
                self.limit.floor_for(current.max_length),
                length_step=self.limit.length_step,
                reserve_s=self.limit.reserve,
                margin=self.limit.margin,
            )
        check = Check(elapsed, len(self.measured), self.rate() or 0.0, remaining, elapsed + remaining, fits, decision)
        self.checks.append(check)
        return check

    def should_stop(self, next_cost: float) -> bool:
        """True when a batch of `next_cost` units started now would end past the hard stop (or it has passed)."""
        rate = self.rate(warmups=True) or 0.0
        stop = self.elapsed() + rate * next_cost > self.hard_stop()
        if stop and self.stopped_at is None:
            self.stopped_at = self.elapsed()
        return stop

    def first_projection(self) -> Optional[dict]:
        """The first check's projection of the prediction time, for comparing with what it took."""
        if not self.checks or self.predict_started_at is None:
            return None
        first = self.checks[0]
        before = self.predict_started_at - self.limit.started_at
        return {
            "measured_batches": first.measured_batches,
            "at_s": first.elapsed_s,
            "projected_predict_s": first.projected_total_s - before,
            "projected_total_s": first.projected_total_s,
        }

    def describe(self, check: Check, current: Setting) -> str:
        """One console line for a check."""
        verdict = "fits" if check.fits else "exceeds"
        text = (
            f"time limit {format_duration(self.limit.limit_s)}: after {check.measured_batches} measured batches "
            f"({format_duration(check.elapsed_s)} since start) the rest is projected at "
            f"{format_duration(check.remaining_s)} ({current.in_words()}; {format_duration(check.projected_total_s)} "
            f"in all), which {verdict} the {format_duration(max(self.time_left(), 0.0))} left before the limit "
            f"less {format_duration(self.limit.reserve)} reserve"
        )
        if not check.fits and not self.limit.fit:
            text += "; rows not predicted by then get the class prior (--fit-time lowers TTA and max_length to fit)"
        return text
