"""Running a prediction on device workers: which batch goes where, the time limit, and the merge of the views.

The rows of each view ("rows", and "swapped" with swap TTA: responses a and b exchanged) are planned into batches
longest first (batching.plan_batches: `batch_size` rows, or a budget of padded tokens). Batches wait in queues; each
idle worker (pref_core.predict.workers) takes the next batch of its queue, and when its queue is empty, the last (the
shortest) batch of another queue, so no device idles while work is left.

Queues, the 1st place's way: with swap TTA and an even number of devices, the even devices run the original view and
the odd ones the swapped view, each over all rows (no view waits for the other, and each device holds the same shapes
the one-device run holds). Otherwise (one device, TTA off, or an odd count) one queue holds every batch, view by view,
and the devices share it: the rows are split.

With a `TimeKeeper` (pref_core.predict.deadline), every finished batch is measured; when a check is due the rest is
projected and, with --fit-time, the setting lowered (the swapped view's batches dropped; the rows not yet run
re-encoded at a shorter max_length and planned again); and no batch starts that would end past the limit less the
reserve. Rows that no view reached are left out of the result (`RunOutput.per_adapter`): the caller gives them the
class prior.

A non-finite probability stops the run at once: NonFiniteProbabilityError names the row id, the precision and the
first module whose output was not finite.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from pref_core.data.labels import NUM_CLASSES, swap_probabilities
from pref_core.predict.batching import plan_batches
from pref_core.predict.budget import BudgetDecision, Setting, format_duration
from pref_core.predict.deadline import Check, TimeKeeper, plan_cost
from pref_core.predict.workers import BatchJob, BatchResult, wait_any

VIEWS = ("rows", "swapped")
# reencode(rows, max_length, with_swap) -> (ids of those rows, their swapped ids or None): the caller's encoder.
Reencode = Callable[[np.ndarray, int, bool], tuple[list, Optional[list]]]


@dataclass
class RunOutput:
    """Each view's probabilities of every adapter, which rows each view reached, and how the run went."""

    probabilities: dict[str, np.ndarray]  # view -> (adapters, n, 3) float32, NaN where the view did not run
    done: dict[str, np.ndarray]  # view -> (n,) bool
    workers: list[tuple[str, int, int]]  # (device, pid, rows run), in worker order
    checks: list[Check] = field(default_factory=list)
    decisions: list[BudgetDecision] = field(default_factory=list)  # the settings --fit-time moved to, in order
    stopped_at_s: Optional[float] = None  # seconds after the start at which the time limit ended the dispatch
    load_s: float = 0.0  # seconds until every worker had loaded its model (not part of the prediction speed)

    @property
    def predicted(self) -> np.ndarray:
        """(n,) bool: rows that at least one view reached."""
        return np.logical_or.reduce([self.done[view] for view in self.done])

    def per_adapter(self) -> list[np.ndarray]:
        """Per adapter, the (m, 3) probabilities of the `predicted` rows (row order): the two views averaged where
        both ran (column a of the swapped view is the original b), else the one that ran."""
        rows = self.probabilities["rows"]
        out = []
        for k in range(rows.shape[0]):
            merged = rows[k].copy()
            if "swapped" in self.probabilities:
                swapped = swap_probabilities(self.probabilities["swapped"][k])
                only_swapped = self.done["swapped"] & ~self.done["rows"]
                both = self.done["swapped"] & self.done["rows"]
                merged[only_swapped] = swapped[only_swapped]
                merged[both] = (merged[both] + swapped[both]) / 2.0
            out.append(merged[self.predicted])
        return out


class _Schedule:
    """The token ids of each view, what is done and in flight, and the queues of planned batches."""

    def __init__(self, views: dict[str, list], n_workers: int, batch_size: int, max_batch_tokens, pad_to_multiple_of):
        n = len(views["rows"])
        self.ids = {view: list(ids) for view, ids in views.items()}
        self.active = [view for view in VIEWS if view in views]
        self.done = {view: np.zeros(n, dtype=bool) for view in views}
        self.in_flight = {view: np.zeros(n, dtype=bool) for view in views}
        self.n_workers = n_workers
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.queues: list[deque] = []
        self.queue_of: list[int] = []
        self.finished = 0
        self._next_id = 0

    def remaining(self, view: str) -> np.ndarray:
        """Rows of `view` neither done nor in flight."""
        return np.flatnonzero(~self.done[view] & ~self.in_flight[view])

    def plan(self) -> None:
        """(Re)plan every active view's remaining rows into batches and deal them to the queues."""
        jobs = {}
        for view in self.active:
            rows = self.remaining(view)
            plan = plan_batches(
                [len(self.ids[view][r]) for r in rows], self.batch_size, self.max_batch_tokens, self.pad_to_multiple_of
            )
            jobs[view] = []
            for batch, width in zip(plan.batches, plan.widths):
                picked = rows[batch]
                jobs[view].append(BatchJob(self._next_id, view, picked, [self.ids[view][r] for r in picked], width))
                self._next_id += 1
        if len(self.active) == 2 and self.n_workers % 2 == 0:
            self.queues = [deque(jobs["rows"]), deque(jobs["swapped"])]
            self.queue_of = [k % 2 for k in range(self.n_workers)]
        else:
            self.queues = [deque(job for view in self.active for job in jobs[view])]
            self.queue_of = [0] * self.n_workers

    @property
    def total_batches(self) -> int:
        return self.finished + sum(len(q) for q in self.queues)

    def take(self, worker: int) -> Optional[BatchJob]:
        """The next batch of the worker's queue, else the shortest batch of the fullest other queue."""
        own = self.queues[self.queue_of[worker]] if self.queues else None
        if own:
            job = own.popleft()
        else:
            others = [q for q in self.queues if q]
            if not others:
                return None
            job = max(others, key=len).pop()
        self.in_flight[job.view][job.rows] = True
        return job

    def peek(self, worker: int) -> Optional[BatchJob]:
        own = self.queues[self.queue_of[worker]] if self.queues else None
        if own:
            return own[0]
        others = [q for q in self.queues if q]
        return max(others, key=len)[-1] if others else None

    def finish(self, job: BatchJob) -> None:
        self.in_flight[job.view][job.rows] = False
        self.done[job.view][job.rows] = True
        self.finished += 1

    def clear(self) -> None:
        self.queues = [deque() for _ in self.queues]


def run_batches(
    workers: Sequence,
    devices: Sequence[str],
    views: dict[str, list],
    *,
    n_adapters: int,
    batch_size: int,
    max_batch_tokens: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
    row_ids: Optional[Sequence] = None,
    dtype_name: str = "fp32",
    keeper: Optional[TimeKeeper] = None,
    max_length: Optional[int] = None,
    reencode: Optional[Reencode] = None,
    say: Callable[[str], None] = lambda text: None,
    log: Callable[[str], None] = lambda text: None,
    progress: bool = False,
) -> RunOutput:
    """Predict every view of `views` ("rows": token ids (n,), and "swapped" for swap TTA) on started `workers`
    (pref_core.predict.workers.start_workers, one per entry of `devices`).

    `keeper` (with `max_length`, the prompt's current max_length, and `reencode` for --fit-time) applies a time limit;
    `say` gets the console lines, `log` the details. Raises NonFiniteProbabilityError at the first non-finite row.
    """
    n = len(views["rows"])
    schedule = _Schedule(views, len(workers), batch_size, max_batch_tokens, pad_to_multiple_of)
    schedule.plan()
    probabilities = {view: np.full((n_adapters, n, NUM_CLASSES), np.nan, dtype=np.float32) for view in views}
    rows_run = [0] * len(workers)
    busy: dict[int, BatchJob] = {}
    output = RunOutput(probabilities, schedule.done, [])
    current = Setting("swapped" in views, max_length or 0)
    bar = _progress(progress, schedule.total_batches, n)
    if keeper is not None:
        keeper.start_predicting()

    def seconds_at(setting: Setting) -> float:
        """Seconds still to run under `setting` at the measured rate, the workers sharing the work."""
        units = 0.0
        for view in ("rows", "swapped") if setting.tta_swap else ("rows",):
            if view != "rows" and view not in schedule.active:
                continue
            lengths = np.asarray([len(schedule.ids[view][r]) for r in np.flatnonzero(~schedule.done[view])], int)
            if setting.max_length < current.max_length:
                lengths = np.minimum(lengths, setting.max_length)  # an upper bound: truncation may cut deeper
            units += plan_cost(lengths, batch_size, max_batch_tokens, pad_to_multiple_of, keeper.width_scale)
        return (keeper.rate() or 0.0) * units / len(workers)

    def apply(decision: BudgetDecision) -> None:
        nonlocal current
        if not decision.tta_swap and "swapped" in schedule.active:
            schedule.active.remove("swapped")
        if decision.max_length < current.max_length:
            if reencode is None:
                raise ValueError("lowering max_length needs a reencode function")
            for view in schedule.active:
                rows = schedule.remaining(view)
                if rows.size:
                    ids, ids_swap = reencode(rows, decision.max_length, view == "swapped")
                    for r, seq in zip(rows, ids_swap if view == "swapped" else ids):
                        schedule.ids[view][r] = seq
        schedule.plan()
        current = decision.setting
        output.decisions.append(decision)
        if bar is not None:
            bar.total = schedule.total_batches
        fits = "fits" if decision.fits else "still does not fit: rows not predicted by the limit get the class prior"
        say(
            f"--fit-time: going on with {current.in_words()} (lowered {' and '.join(decision.lowered)}; "
            f"projected {format_duration(decision.projected_s)} more, {fits}); the reasons are in the log"
        )

    try:
        while True:
            for k in range(len(workers)):
                if k in busy:
                    continue
                nxt = schedule.peek(k)
                if nxt is None:
                    continue
                if keeper is not None and keeper.should_stop(
                    plan_cost([len(s) for s in nxt.sequences], batch_size, None, pad_to_multiple_of, keeper.width_scale)
                ):
                    output.stopped_at_s = keeper.stopped_at
                    schedule.clear()
                    break
                job = schedule.take(k)
                workers[k].submit(job)
                busy[k] = job
            if not busy:
                break
            for k in wait_any(workers, list(busy)):
                job = busy.pop(k)
                result: BatchResult = workers[k].collect()
                if result.nonfinite is not None:
                    _raise_nonfinite(job, result, row_ids, dtype_name)
                probabilities[job.view][:, job.rows] = result.probabilities
                schedule.finish(job)
                rows_run[k] += len(job.rows)
                if bar is not None:
                    bar.update(1)
                if keeper is None:
                    continue
                keeper.record(k, job.shape, result.seconds)
                if keeper.due(schedule.finished, schedule.total_batches):
                    _check(keeper, current, seconds_at, output, say, log, apply)
    finally:
        if bar is not None:
            bar.close()
    output.workers = [
        (str(device), int(worker.pid or 0), rows) for device, worker, rows in zip(devices, workers, rows_run)
    ]
    return output


def _check(keeper: TimeKeeper, current: Setting, seconds_at, output: RunOutput, say, log, apply) -> None:
    """A due projection: said on the console the first time and whenever its verdict turns to "exceeds"; with
    --fit-time a lower setting is applied (never a higher one)."""
    previous = keeper.checks[-1] if keeper.checks else None
    check = keeper.check(current, seconds_at)
    output.checks.append(check)
    log(f"time check: {check.to_dict()}")
    if previous is None or (previous.fits and not check.fits):
        say(keeper.describe(check, current))
    decision = check.decision
    if decision is None or decision.setting == current:
        return
    if (decision.tta_swap and not current.tta_swap) or decision.max_length > current.max_length:
        return  # only ever lower
    log(f"--fit-time decision: {decision.reason}")
    apply(decision)


def _raise_nonfinite(job: BatchJob, result: BatchResult, row_ids, dtype_name: str) -> None:
    from pref_core.model.precision import check_finite_probabilities

    position, module = result.nonfinite
    ids = [row_ids[r] if row_ids is not None else f"#{r}" for r in job.rows]
    bad = next(p for p in result.probabilities if not np.isfinite(p).all())
    check_finite_probabilities(bad, ids, dtype_name, module=module)
    raise AssertionError("unreachable: the batch held a non-finite probability")  # pragma: no cover


def _progress(on: bool, total: int, n_rows: int):
    if not on:
        return None
    from pref_core.progress import progress_bar

    return progress_bar(total=total, desc=f"predict {n_rows} rows", unit="batch")


def n_devices_for_threads(devices: Sequence[str]) -> Optional[int]:
    """torch threads for each CPU worker when several share the cores (None when no worker is a CPU one)."""
    import os

    n_cpu = sum(1 for d in devices if str(d).startswith("cpu"))
    if not n_cpu:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // n_cpu)


def width_scale_of(base_dir) -> float:
    """predict.budget.attention_width_scale from a base model folder's config.json (inf when it cannot be read)."""
    import json
    from pathlib import Path

    from pref_core.predict.budget import attention_width_scale

    try:
        config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return math.inf
    config = config.get("text_config") or config
    try:
        return attention_width_scale(
            config["hidden_size"],
            config["intermediate_size"],
            config["num_attention_heads"],
            config.get("num_key_value_heads"),
            config.get("head_dim"),
        )
    except (KeyError, TypeError, ZeroDivisionError):
        return math.inf
