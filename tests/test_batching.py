"""Token-budget batches (pref_core.predict.batching): hand-computed packings, the first batch as the peak, the error
for a budget below the longest row, and predictions equal to today's fixed-size batches."""

from __future__ import annotations

import numpy as np
import pytest

from pref_core.predict.batching import plan_fixed_batches, plan_token_batches


def _rows(plan):
    return [b.tolist() for b in plan.batches]


def test_the_docstring_example():
    # Longest first: rows 1, 3 (9), 2 (5), 5 (4), 0 (3), 4 (2). First batch [1, 3]: 2 x 9 = 18 (a third row: 27 > 20),
    # so every batch keeps to 18: [2, 5, 0] at width 5 = 15 (a fourth: 20 > 18), then [4] at width 2.
    plan = plan_token_batches([3, 9, 5, 9, 2, 4], max_batch_tokens=20)
    assert _rows(plan) == [[1, 3], [2, 5, 0], [4]]
    assert plan.widths == (9, 5, 2)
    assert plan.batch_tokens == 18
    assert plan.padded_tokens() == [18, 15, 2]
    assert plan.shapes() == [(2, 9), (3, 5), (1, 2)]


def test_max_rows_caps_the_short_batches():
    # Widest 10: min(3 rows, 40 // 10 = 4) = 3 rows, so batches keep to 30 tokens and 3 rows:
    # [0, 1, 2] at 10 (30), [3, 4, 5] at 2 (6: the cap, not 30 // 2 = 15), [6, 7] at 2.
    plan = plan_token_batches([10, 8, 8, 2, 2, 2, 2, 2], max_batch_tokens=40, max_rows=3)
    assert _rows(plan) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert plan.widths == (10, 2, 2)
    assert plan.batch_tokens == 30


def test_pad_to_multiple_of_counts_the_padded_width():
    # 9 pads to 16: 32 // 16 = 2 rows; 3 pads to 8: 32 // 8 = 4 rows, 2 left.
    plan = plan_token_batches([9, 7, 3, 1], max_batch_tokens=32, pad_to_multiple_of=8)
    assert _rows(plan) == [[0, 1], [2, 3]]
    assert plan.widths == (16, 8)


def test_rows_of_equal_length_keep_their_order():
    plan = plan_token_batches([4, 4, 4, 4, 4], max_batch_tokens=8)
    assert _rows(plan) == [[0, 1], [2, 3], [4]]


def test_a_budget_below_the_longest_row_names_the_row_the_budget_and_the_fix():
    with pytest.raises(ValueError) as error:
        plan_token_batches([700, 1536, 20], max_batch_tokens=1024)
    message = str(error.value)
    assert "max_batch_tokens=1024" in message and "row 1: 1536 tokens" in message
    assert "at least 1536" in message and "max_length" in message
    with pytest.raises(ValueError, match="padded to 1544"):  # the padded width is what must fit
        plan_token_batches([1537], max_batch_tokens=1540, pad_to_multiple_of=8)


@pytest.mark.parametrize("bad, match", [({"max_batch_tokens": 0}, "positive"), ({"max_rows": 0}, "at least 1")])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        plan_token_batches([3, 2], **{"max_batch_tokens": 10, **bad})


def test_an_empty_row_is_refused_by_index():
    with pytest.raises(ValueError, match="row 2 has 0 tokens"):
        plan_token_batches([3, 2, 0], max_batch_tokens=10)


def test_no_rows_no_batches():
    plan = plan_token_batches([], max_batch_tokens=10)
    assert plan.batches == () and plan.n_rows == 0


@pytest.mark.parametrize("budget, max_rows, multiple", [(4096, None, None), (3000, 16, None), (5000, None, 8)])
def test_on_a_realistic_length_mix_the_first_batch_is_the_peak(budget, max_rows, multiple):
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(600), 0.6, size=2000), 40, 1024).astype(int)  # median ~600, cap 1024
    plan = plan_token_batches(lengths, budget, max_rows=max_rows, pad_to_multiple_of=multiple)
    rows = np.concatenate(plan.batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row exactly once
    tokens = plan.padded_tokens()
    assert tokens[0] == max(tokens) == plan.batch_tokens <= budget  # the first batch holds the most padded tokens
    assert list(plan.widths) == sorted(plan.widths, reverse=True)  # ... and is the widest
    attention = [len(b) * w * w for b, w in zip(plan.batches, plan.widths)]
    assert attention[0] == max(attention)  # so rows x width^2 (eager attention scores) peaks there too
    for batch, width in zip(plan.batches, plan.widths):
        assert lengths[batch].max() <= width
        if max_rows:
            assert len(batch) <= max_rows
    assert np.array_equal(plan.merge([lengths[b] for b in plan.batches]), lengths)  # merge restores the row order


def test_merge_checks_the_outputs_fit_the_batches():
    plan = plan_token_batches([3, 1, 2], max_batch_tokens=3)  # [[0], [2], [1]]
    out = plan.merge([np.array([[0.0, 1.0]]), np.array([[2.0, 3.0]]), np.array([[4.0, 5.0]])])
    assert out.tolist() == [[0.0, 1.0], [4.0, 5.0], [2.0, 3.0]]
    with pytest.raises(ValueError, match="batch 1 has 1 rows but its output has 2"):
        plan.merge([np.zeros((1, 2)), np.zeros((2, 2)), np.zeros((1, 2))])


def test_fixed_batches_as_a_plan():
    plan = plan_fixed_batches([3, 9, 5, 9, 2], batch_size=2)
    assert _rows(plan) == [[1, 3], [2, 0], [4]]
    assert plan.widths == (9, 5, 2) and plan.batch_tokens == 18


def test_token_budget_predictions_equal_fixed_batch_predictions():
    """Same tiny model, same rows: batches of a token budget give the fixed-batch probabilities within 1e-6."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pref_core.model.preference import PreferenceModel
    from pref_core.predict.inference import PreferenceCollator, predict_token_ids

    torch.manual_seed(0)
    backbone = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    model = PreferenceModel(backbone, "label_token", [5, 6, 7], pad_token_id=0).eval()
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 90, size=37)
    rows = [rng.integers(1, 64, size=n).tolist() for n in lengths]
    fixed = predict_token_ids(model, rows, batch_size=4, pad_token_id=0)  # (37, 3), today's path

    plan = plan_token_batches(lengths, max_batch_tokens=200)
    assert len({len(b) for b in plan.batches}) > 1  # the batches really differ in size from the fixed path's
    collate = PreferenceCollator(pad_token_id=0)
    outputs = []
    with torch.inference_mode():
        for batch_rows in plan.batches:
            batch = collate([{"input_ids": rows[i]} for i in batch_rows])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]  # (b, 3)
            outputs.append(torch.softmax(logits.float(), dim=-1).numpy())
    budget = plan.merge(outputs)
    assert np.abs(budget - fixed).max() <= 1e-6
