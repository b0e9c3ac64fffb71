"""Issue 29 options outside the bundle: token-budget prediction equals fixed batches (predict_token_ids and the
Trainer's evaluation with train.eval_max_batch_tokens), a budget below the longest row stops in one line naming it,
Gemma-2 in fp16 loads with fp32 attention scores, `arena-pref predict` refuses a bad --dtype/--max-batch-tokens
before anything loads. (The bundle's options: tests/test_export.py; the scheduler and time limit: test_runner.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from pref_core.predict.batching import TokenBudgetError, check_token_budget
from pref_core.predict.inference import predict_token_ids
from tests.factories import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def rows(tokenizer, n: int = 23) -> list[list[int]]:
    base = tokenizer.encode("which river is longest ? the nile or the amazon , a or b or tie " * 4)
    rng = np.random.default_rng(0)
    return [base[: int(k)] for k in rng.integers(3, len(base), size=n)]


@pytest.fixture(scope="module")
def model(tiny_dir, tokenizer):
    from pref_core.model.preference import build_model

    config = tiny_config("classifier", model={"tiny": {"hidden_size": 32}}, seed=0)
    built = build_model(config.model, config.lora, tokenizer, name_or_path=tiny_dir, seed=0)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter
        generator = torch.Generator().manual_seed(3)
        for _, param in built.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return built.eval()


@pytest.mark.parametrize("times_widest", [1, 3, 100])
def test_token_budget_prediction_equals_fixed_batches(model, tokenizer, times_widest):
    ids = rows(tokenizer)
    budget = times_widest * max(len(seq) for seq in ids)  # one row per batch up to all rows in one
    swapped = [list(reversed(seq)) for seq in ids]
    fixed = predict_token_ids(model, ids, swapped, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    packed = predict_token_ids(
        model, ids, swapped, batch_size=32, pad_token_id=tokenizer.pad_token_id, max_batch_tokens=budget
    )
    np.testing.assert_allclose(packed, fixed, atol=1e-6, rtol=0)


def test_a_budget_below_the_longest_row_is_one_line_naming_it():
    with pytest.raises(TokenBudgetError) as caught:
        check_token_budget([5, 40, 7], 32, row_ids=["a", "b", "c"])
    message = str(caught.value)
    assert "\n" not in message
    assert "--max-batch-tokens 32" in message and "id b: 40 tokens" in message and "at least 40" in message
    with pytest.raises(TokenBudgetError, match="padded to 48"):
        check_token_budget([41], 46, pad_to_multiple_of=8)
    check_token_budget([5, 40], 40)  # fits exactly
    check_token_budget([5, 40], None)  # no budget: nothing to check


def test_trainer_evaluation_with_a_token_budget_equals_fixed_batches(model, tokenizer, tmp_path):
    from pref_core.train.trainer import build_trainer

    ids = sorted(rows(tokenizer, 19), key=len, reverse=True)  # fine_tune_fold sorts eval rows longest first
    data = Dataset.from_dict(
        {"input_ids": ids, "length": [len(s) for s in ids], "label": [k % 3 for k in range(len(ids))]}
    )
    widest = max(len(s) for s in ids)
    predictions = {}
    for budget in (None, 2 * widest):
        config = tiny_config("classifier", seed=0, eval_batch_size=8, eval_max_batch_tokens=budget)
        trainer = build_trainer(config, model, tokenizer, data, data, tmp_path / f"ckpt_{budget}")
        loader = trainer.get_eval_dataloader()
        batches = [batch["input_ids"].shape for batch in loader]
        if budget is not None:
            assert all(r * w <= budget for r, w in batches) and batches[0][0] < 8
        assert sum(r for r, _ in batches) == len(ids)
        predictions[budget] = trainer.predict(data).predictions
    logits = [p[0] if isinstance(p, tuple) else p for p in predictions.values()]
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-6, rtol=0)


def test_gemma2_in_fp16_loads_with_fp32_attention_scores(tmp_path):
    from transformers import Gemma2Config, LlamaConfig

    from pref_core.model.backbone import attention_for
    from pref_core.model.precision import FP32_SOFTCAP_ATTENTION

    gemma = tmp_path / "gemma2"
    Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8,
    ).save_pretrained(gemma)  # fmt: skip
    llama = tmp_path / "llama"
    LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(llama)
    assert attention_for(str(gemma), None, "sdpa", torch.float16) == FP32_SOFTCAP_ATTENTION
    assert attention_for(str(llama), None, "sdpa", torch.float16) == "sdpa"
    assert attention_for(str(llama), None, "eager", torch.float32) == "eager"


@pytest.mark.parametrize(
    "extra, words", [(["--dtype", "fp64"], ["--dtype fp64", "fp16"]), (["--max-batch-tokens", "0"], ["positive"])]
)
def test_arena_pref_predict_refuses_bad_options_in_one_line(capsys, tmp_path, extra, words):
    from arena_pref.cli import main as cli_main

    code = cli_main(["predict", "--test-csv", str(tmp_path / "none.csv"), "--out", str(tmp_path / "s.csv"), *extra])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for word in words:
        assert word in err[0]
