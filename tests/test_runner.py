"""The prediction scheduler (pref_core.predict.runner) with fake workers on a fake clock: which batch runs where, the
time limit's projection, --fit-time's decisions (TTA off, then a shorter max_length), the stop before the limit, and
the one-line stop on a non-finite probability. No model: each fake batch takes rows x width x 1 ms of fake time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pref_core.data.labels import swap_probabilities
from pref_core.model.precision import NonFiniteProbabilityError
from pref_core.predict.deadline import TimeKeeper, TimeLimit, default_reserve, plan_cost
from pref_core.predict.runner import run_batches
from pref_core.predict.workers import BatchResult

MS_PER_TOKEN = 1e-3


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_probabilities(sequences, view: str) -> np.ndarray:
    """(n, 3) probabilities from each row's first token and length; the swapped view is the mirror image, so a
    swap-consistent 'model' gives both views the same answer after swap_probabilities."""
    logits = np.array([[seq[0] % 5, len(seq) % 3, 1.0] for seq in sequences], dtype=np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return (swap_probabilities(probs) if view == "swapped" else probs).astype(np.float32)


class FakeWorker:
    """The worker interface (submit / ready / collect) on a fake clock; remembers the jobs it ran."""

    def __init__(self, clock: Clock, warmup_s: float = 0.0, nonfinite_row: int | None = None):
        self.clock, self.warmup_s, self.nonfinite_row = clock, warmup_s, nonfinite_row
        self.pid = 4242
        self.jobs = []
        self._result = None

    def submit(self, job) -> None:
        seconds = len(job.rows) * job.width * MS_PER_TOKEN + (self.warmup_s if not self.jobs else 0.0)
        self.clock.now += seconds
        self.jobs.append(job)
        probs = fake_probabilities(job.sequences, job.view)[None]  # (1 adapter, n, 3)
        nonfinite = None
        if self.nonfinite_row is not None and self.nonfinite_row in job.rows.tolist():
            position = job.rows.tolist().index(self.nonfinite_row)
            probs[0, position] = np.nan
            nonfinite = (position, "backbone.model.layers.1.mlp.down_proj")
        self._result = BatchResult(job.job_id, probs, seconds, nonfinite)

    def ready(self) -> bool:
        return self._result is not None

    def collect(self):
        result, self._result = self._result, None
        return result

    waitable = None


def rows_of_lengths(lengths, start: int = 1):
    return [[start + (i % 4)] + [7] * (n - 1) for i, n in enumerate(lengths)]


LENGTHS = [100] * 8 + [60] * 16 + [30] * 16  # 40 rows
IDS = [f"r{i}" for i in range(len(LENGTHS))]


def views(tta: bool, lengths=LENGTHS):
    out = {"rows": rows_of_lengths(lengths)}
    if tta:
        out["swapped"] = rows_of_lengths(lengths, start=2)
    return out


def run(workers, tta=True, keeper=None, reencode=None, max_length=100, **options):
    return run_batches(
        workers,
        ["cpu"] * len(workers),
        views(tta),
        n_adapters=1,
        batch_size=4,
        row_ids=IDS,
        keeper=keeper,
        max_length=max_length,
        reencode=reencode,
        **options,
    )


def keeper_for(clock, limit_s, **options):
    return TimeKeeper(TimeLimit(limit_s, clock.now, reserve_s=0.0, margin=0.0, check_after=2, **options), clock=clock)


def full_cost(lengths=LENGTHS, tta=True) -> float:
    """Fake seconds of the whole run (one worker)."""
    return plan_cost(lengths, 4, None) * MS_PER_TOKEN * (2 if tta else 1)


# -- where batches run -----------------------------------------------------------------------------------------------


def test_one_worker_runs_every_row_in_both_views_and_averages_them():
    worker = FakeWorker(Clock())
    out = run([worker])
    assert out.predicted.all() and out.done["rows"].all() and out.done["swapped"].all()
    assert [job.view for job in worker.jobs] == ["rows"] * 10 + ["swapped"] * 10  # view by view, as before
    rows, swapped = views(True)["rows"], views(True)["swapped"]
    want = (fake_probabilities(rows, "rows") + swap_probabilities(fake_probabilities(swapped, "swapped"))) / 2
    np.testing.assert_allclose(out.per_adapter()[0], want, atol=1e-7)
    assert out.workers == [("cpu", 4242, 80)]


def test_with_tta_two_workers_each_run_one_view_over_every_row():
    clock = Clock()
    first, second = FakeWorker(clock), FakeWorker(clock)
    out = run([first, second])
    assert {job.view for job in first.jobs} == {"rows"} and {job.view for job in second.jobs} == {"swapped"}
    assert sorted(np.concatenate([j.rows for j in first.jobs]).tolist()) == list(range(40))
    assert [n for _, _, n in out.workers] == [40, 40]
    assert np.asarray(first.jobs[0].rows).tolist() == [0, 1, 2, 3]  # longest first in each view
    one = run([FakeWorker(Clock())])
    np.testing.assert_allclose(out.per_adapter()[0], one.per_adapter()[0], atol=0)


def test_without_tta_two_workers_share_the_rows():
    clock = Clock()
    first, second = FakeWorker(clock), FakeWorker(clock)
    out = run([first, second], tta=False)
    assert out.predicted.all() and "swapped" not in out.done
    assert [n for _, _, n in out.workers] == [20, 20]  # the queue alternates between them


def test_an_idle_worker_takes_the_shortest_batch_of_the_other_view():
    """Three workers with TTA: an odd count shares one queue, view by view; every row still gets both views."""
    clock = Clock()
    workers = [FakeWorker(clock) for _ in range(3)]
    out = run(workers)
    assert out.done["rows"].all() and out.done["swapped"].all()
    assert sum(n for _, _, n in out.workers) == 80


def test_a_non_finite_probability_stops_the_run_naming_the_row_and_the_module():
    worker = FakeWorker(Clock(), nonfinite_row=13)
    with pytest.raises(NonFiniteProbabilityError) as error:
        run([worker], tta=False, dtype_name="fp16")
    message = str(error.value)
    assert message.startswith("row id r13 (1 of 4 rows): predicted probabilities are NaN under dtype fp16")
    assert "backbone.model.layers.1.mlp.down_proj" in message and "--dtype bf16" in message and "\n" not in message
    assert len(worker.jobs) < 10  # stopped at that batch, not at the end


# -- the time limit --------------------------------------------------------------------------------------------------


def test_a_run_that_fits_is_projected_exactly_and_left_alone():
    clock = Clock()
    total = full_cost()
    said = []
    keeper = keeper_for(clock, limit_s=2 * total, fit=True)
    out = run([FakeWorker(clock)], keeper=keeper, say=said.append)
    assert out.predicted.all() and out.decisions == [] and out.stopped_at_s is None
    first = keeper.first_projection()
    # Width-priced at an infinite width scale = tokens: the fake cost is exactly tokens, so the projection is exact.
    assert first["projected_predict_s"] == pytest.approx(total, rel=1e-9)
    assert len(said) == 1 and "fits" in said[0] and said[0].startswith("time limit")


def test_fit_time_turns_tta_off_first_and_keeps_what_both_views_already_did():
    clock = Clock()
    total = full_cost()  # both views
    said = []
    keeper = keeper_for(clock, limit_s=0.8 * total, fit=True)
    worker = FakeWorker(clock)
    out = run([worker], keeper=keeper, say=said.append)
    assert [d.lowered for d in out.decisions] == [("tta_swap",)]
    assert out.predicted.all() and not out.done["swapped"].any()  # the swapped view had not started yet
    assert clock.now - keeper.limit.started_at <= keeper.limit.limit_s
    assert "exceeds" in said[0] and said[1].startswith("--fit-time: going on with TTA off, max_length 100")
    np.testing.assert_allclose(out.per_adapter()[0], fake_probabilities(views(False)["rows"], "rows"), atol=0)


def test_fit_time_then_lowers_max_length_and_reencodes_the_rows_not_run_yet():
    clock = Clock()
    calls = []

    def reencode(rows, max_length, with_swap):
        calls.append((rows.tolist(), max_length, with_swap))
        short = [min(LENGTHS[r], max_length) for r in rows]
        return rows_of_lengths(short), None

    no_tta = full_cost(tta=False)
    # Checked after 3 batches (1.04 s: 2 x 400 + 240 tokens); 1.0 s left: TTA off leaves 1.2 s, max_length 36 0.912 s.
    keeper = keeper_for(clock, limit_s=0.91 * no_tta, fit=True, floor_max_length=32, length_step=16)
    worker = FakeWorker(clock)
    out = run([worker], keeper=keeper, reencode=reencode)
    [decision] = out.decisions
    assert decision.lowered == ("tta_swap", "max_length") and decision.fits and decision.max_length < 100
    [(rows, max_length, with_swap)] = calls
    assert max_length == decision.max_length and not with_swap
    assert set(rows) == set(range(40)) - set(np.concatenate([j.rows for j in worker.jobs[:3]]).tolist())
    later = [job for job in worker.jobs if job.job_id >= 20]  # planned after the decision
    assert later and max(len(s) for job in later for s in job.sequences) <= decision.max_length
    assert out.predicted.all() and clock.now - keeper.limit.started_at <= keeper.limit.limit_s


def test_without_fit_time_the_run_stops_before_the_limit_and_the_rest_is_left_for_the_prior():
    clock = Clock()
    said = []
    # Batches of 400, 400, 240, 240, ... tokens: checked after the third (1.04 s), stopped before the fifth.
    keeper = keeper_for(clock, limit_s=0.6 * full_cost(tta=False))
    out = run([FakeWorker(clock)], tta=False, keeper=keeper, say=said.append)
    assert out.decisions == [] and out.stopped_at_s is not None
    assert out.predicted.sum() == 16 and out.predicted[:16].all()  # the longest rows came first
    assert clock.now - keeper.limit.started_at <= keeper.limit.limit_s  # no batch ran past the limit
    assert "exceeds" in said[0] and "class prior" in said[0] and "--fit-time" in said[0]
    assert len(out.per_adapter()[0]) == out.predicted.sum()


def test_when_even_the_floor_does_not_fit_it_runs_at_the_floor_and_stops_in_time():
    clock = Clock()
    said = []

    def reencode(rows, max_length, with_swap):
        return rows_of_lengths([min(LENGTHS[r], max_length) for r in rows]), None

    keeper = keeper_for(clock, limit_s=0.7 * full_cost(tta=False), fit=True, floor_max_length=60)
    out = run([FakeWorker(clock)], keeper=keeper, reencode=reencode, say=said.append)
    assert out.decisions[-1].max_length == 60 and not out.decisions[-1].fits
    assert "still does not fit" in said[-1] and "class prior" in said[-1]
    assert not out.predicted.all() and clock.now - keeper.limit.started_at <= keeper.limit.limit_s


def test_the_first_batch_of_each_worker_is_not_measured():
    clock = Clock()
    keeper = keeper_for(clock, limit_s=10_000.0)
    run([FakeWorker(clock, warmup_s=30.0)], keeper=keeper)
    assert keeper.rate() == pytest.approx(MS_PER_TOKEN, rel=1e-9)  # the 30 s warm-up is not in the rate


def test_default_reserve_and_floor():
    assert default_reserve(9 * 3600) == 600 and default_reserve(600) == 30
    assert TimeLimit(100, 0.0).floor_for(2048) == 1024
    assert TimeLimit(100, 0.0, floor_max_length=512).floor_for(256) == 256
    assert plan_cost([], 4, None) == 0.0 and math.isinf(TimeKeeper(TimeLimit(1, 0.0)).width_scale)
