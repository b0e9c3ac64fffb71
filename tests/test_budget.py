"""The time budget (pref_core.predict.budget): limits parsed, projections and decisions against hand-computed values,
and the longest-first bias of a token-only projection."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from pref_core.predict.batching import plan_token_batches
from pref_core.predict.budget import (
    BudgetDecision,
    Setting,
    attention_width_scale,
    batch_cost,
    candidate_settings,
    decide_settings,
    format_duration,
    parse_duration,
    project_time,
    remaining_seconds,
)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("9h", 32400),
        ("90m", 5400),
        ("3600s", 3600),
        ("8h30m", 30600),
        ("2.5h", 9000),
        (" 1H 30M ", 5400),
        ("1h0m30s", 3630),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["9", "9x", "h", "-1h", "0h", "9h9h", "", "nine hours", "1h 2"])
def test_parse_duration_refuses_what_it_cannot_read_and_says_how_to_write_it(text):
    with pytest.raises(ValueError, match=r"9h, 90m, 3600s|more than zero"):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (5400, 450, 42)] == ["1.5 h", "7.5 min", "42 s"]


def test_attention_width_scale_by_hand():
    # hidden 4, intermediate 8, 2 heads of 2 (q = 4), 1 kv head (kv = 2):
    # dense 2*4*4 + 2*4*2 + 3*4*8 = 32 + 16 + 96 = 144 FLOPs-halves per token; attention 2*q = 8 per key -> 144 / 8.
    assert attention_width_scale(4, 8, 2, 1, head_dim=2) == 18.0
    assert attention_width_scale(3584, 14336, 16, 8, head_dim=256) == 24192.0  # Gemma-2-9B
    assert attention_width_scale(4096, 14336, 32, 8) == 26624.0  # Llama-3-8B
    assert batch_cost(4, 50, width_scale=100) == 4 * 50 * 1.5


SHAPES = [(2, 100), (4, 50), (8, 25), (10, 10)]  # (rows, width), longest first


def test_project_time_by_hand():
    # Rate from batch 2 only (batch 1 is warm-up): 2 s / (4 x 50) = 0.01 s per token; batches 3 and 4 hold
    # 8 x 25 + 10 x 10 = 300 tokens -> 3 s; total 5 + 2 + 3 = 10 s.
    projection = project_time(SHAPES, [5.0, 2.0])
    assert projection.total_s == pytest.approx(10.0) and projection.by_tokens_s == pytest.approx(10.0)
    assert projection.remaining_s == pytest.approx(3.0) and projection.elapsed_s == 7.0
    # Priced with width_scale 100: batch 2 costs 200 x 1.5 = 300 units -> 2/300 s per unit; batches 3, 4 cost
    # 200 x 1.25 + 100 x 1.1 = 360 units -> 2.4 s; total 9.4 s, below the token-only 10 s.
    priced = project_time(SHAPES, [5.0, 2.0], width_scale=100)
    assert priced.total_s == pytest.approx(9.4) and priced.by_tokens_s == pytest.approx(10.0)
    # Warm-up kept: 7 s / 400 tokens x 300 = 5.25 s more.
    assert project_time(SHAPES, [5.0, 2.0], skip_first=False).total_s == pytest.approx(12.25)
    # One measured batch is the rate (nothing to skip): 5 s / 200 tokens x (200 + 200 + 100) = 12.5 s more.
    assert project_time(SHAPES, [5.0]).total_s == pytest.approx(17.5)
    assert "projected 9 s" in project_time(SHAPES, [5.0, 2.0], width_scale=100).in_words()


def test_project_time_refuses_impossible_measurements():
    with pytest.raises(ValueError, match="at least one"):
        project_time(SHAPES, [])
    with pytest.raises(ValueError, match="5 measured batches but only 4"):
        project_time(SHAPES, [1.0] * 5)


def test_pricing_by_width_removes_the_longest_first_bias_that_tokens_alone_carry():
    """Simulated run: a batch takes a x rows x width + b x rows x width^2 seconds (+ 3 s warm-up on the first), on
    realistic lengths. From the first 5 batches, the width-priced projection (width_scale = a / b) is exact; the
    token-only one over-estimates, because the widest (dearest per token) batches were measured."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(600), 0.6, size=2000), 40, 2048).astype(int)
    shapes = plan_token_batches(lengths, max_batch_tokens=16384).shapes()
    a, b = 1e-4, 1e-4 / 5000  # attention costs as much as the rest at 5,000 tokens
    true = [a * r * w + b * r * w * w for r, w in shapes]
    true[0] += 3.0
    projection = project_time(shapes, true[:5], width_scale=a / b)
    assert projection.total_s == pytest.approx(sum(true), rel=1e-9)
    assert projection.by_tokens_s > 1.1 * sum(true)  # the bias: >10% too long from the widest batches


LENGTHS = [100] * 10 + [50] * 10
seconds_at = partial(remaining_seconds, lengths=LENGTHS, seconds_per_unit=1.0, max_batch_tokens=1000)


def test_remaining_seconds_by_hand():
    # max_length 100: [10 rows x 100] = 1000, then 10 rows of 50 (1000 // 50 = 20 allowed) = 500 -> 1500.
    assert seconds_at(Setting(False, 100)) == 1500
    assert seconds_at(Setting(True, 100)) == 3000  # both views
    assert remaining_seconds(Setting(True, 100), LENGTHS, 1.0, 1000, n_devices=2) == 1500  # a view per device
    # max_length 60: lengths 10 x 60 + 10 x 50; 1000 // 60 = 16 rows -> every batch keeps to 960 tokens:
    # [10 x 60 + 6 x 50] at width 60 = 960, then 4 x 50 = 200 -> 1160.
    assert seconds_at(Setting(False, 60)) == 1160
    assert seconds_at(Setting(False, 70)) == 14 * 70 + 6 * 50  # 1280
    assert remaining_seconds(Setting(False, 100), [], 1.0, 1000) == 0.0


def test_candidate_settings_order():
    assert candidate_settings(Setting(True, 2048), 1920) == [
        Setting(True, 2048),
        Setting(False, 2048),
        Setting(False, 1984),
        Setting(False, 1920),
    ]
    assert candidate_settings(Setting(False, 100), 50, length_step=30) == [
        Setting(False, 100),
        Setting(False, 70),
        Setting(False, 50),
    ]
    assert candidate_settings(Setting(False, 512), 512) == [Setting(False, 512)]
    with pytest.raises(ValueError, match="floor 4096 is above max_length 2048"):
        candidate_settings(Setting(True, 2048), 4096)


def _decide(limit_s, **options):
    options = {"elapsed_s": 0.0, "reserve_s": 0.0, "margin": 0.0, **options}
    return decide_settings(Setting(True, 100), seconds_at, limit_s, floor_max_length=50, length_step=10, **options)


def test_a_run_that_fits_keeps_its_setting():
    decision = _decide(3000)  # both views: 3000 s
    assert decision.fits and decision.setting == Setting(True, 100) and decision.lowered == ()
    assert decision.reason.startswith("projected 50.0 min at TTA on, max_length 100 fits the 50.0 min left")


def test_tta_goes_off_first():
    decision = _decide(2000)  # 3000 s with TTA, 1500 s without
    assert decision.fits and decision.setting == Setting(False, 100) and decision.lowered == ("tta_swap",)
    assert decision.projected_s == 1500
    assert "exceeds" in decision.reason and "TTA off, max_length 100: 25.0 min fits" in decision.reason


def test_then_max_length_is_lowered_step_by_step():
    # TTA off 1500, max_length 90: 1440, 80: 1360, 70: 1280, 60: 1160 <= 1200.
    decision = _decide(1200)
    assert decision.fits and decision.setting == Setting(False, 60)
    assert decision.lowered == ("tta_swap", "max_length") and decision.projected_s == 1160
    assert decision.reason.endswith("TTA off, max_length 100: 25.0 min; TTA off, max_length 60: 19.3 min fits")


def test_elapsed_reserve_and_margin_count():
    # 2000 - 400 elapsed - 100 reserve = 1500 left; x1.1: TTA off 1650, 90: 1584, 80: 1496 fits.
    decision = _decide(2000, elapsed_s=400, reserve_s=100, margin=0.1)
    assert decision.setting == Setting(False, 80) and decision.available_s == 1500


def test_when_nothing_fits_the_floor_comes_back_unfit_and_says_what_happens():
    decision = _decide(900)  # the floor (max_length 50): 20 rows x 50 = 1000 > 900
    assert not decision.fits and decision.setting == Setting(False, 50)
    assert "max_length 50 (the floor): 16.7 min" in decision.reason and "class prior" in decision.reason


def test_the_decision_round_trips_through_json():
    decision = _decide(1200)
    assert BudgetDecision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision


def test_bad_budget_arguments():
    with pytest.raises(ValueError, match="limit_s must be > 0"):
        _decide(0)
    with pytest.raises(ValueError, match="margin=-0.1"):
        _decide(1000, margin=-0.1)
