"""fp16 numerics (pref_core.model.precision) on tiny random Gemma-2 and Llama models built in memory, on CPU.

What transformers 5.24's eager attention does in fp16, and what the fp32-softcap attention changes:
- Gemma-2 (softcap 50): no NaN even when q.k overflows (tanh(inf) = 1 is the fp32 answer), but the capped scores are
  stored in fp16: ~2-4e-2 error in the attention output where ours keeps < 3e-3 (the fp16 rounding of the output).
- Llama (no softcap): a q.k past 65,504 is inf and the softmax NaN; ours stays finite and exact to < 1e-2.
- gate x up overflowing in the MLP is NaN either way: the finite check names the row, `locate_nonfinite` the module.
- The label_token head's final-logit softcap runs in fp32 on 3 logits: exact to 1e-5 where the LM's own fp16 path
  is off by > 2e-3.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pref_core.model.precision import (
    FP32_SOFTCAP_ATTENTION,
    NonFiniteProbabilityError,
    check_finite_probabilities,
    choose_attention,
    locate_nonfinite,
    register_softcap_attention,
    softcap_attention,
)
from pref_core.model.preference import PreferenceModel

LABEL_IDS = [5, 6, 7]
FP16_MIN = torch.finfo(torch.float16).min


def _gemma2(attn: str = "eager"):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        attn_implementation=attn,
    )
    return Gemma2ForCausalLM(config).eval()


def _llama(attn: str = "eager"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


def _scale(backbone, factor: float, names: tuple[str, ...]):
    """A copy whose weights named by `names` (e.g. q_proj, k_proj) are multiplied by `factor`."""
    backbone = copy.deepcopy(backbone)
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            if any(part in name for part in names):
                param.mul_(factor)
    return backbone


def _batch():
    """4 rows of 24 tokens (longer than the sliding window of 8), two of them right-padded; no label token ids."""
    ids = torch.randint(8, 64, (4, 24), generator=torch.Generator().manual_seed(1))  # (batch, seq)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[3, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _probs(backbone, dtype, attn: str) -> torch.Tensor:
    """(4, 3) float64 probabilities of a label_token PreferenceModel on a copy of `backbone` in `dtype` with `attn`."""
    backbone = copy.deepcopy(backbone).to(dtype)
    backbone.set_attn_implementation(attn)
    model = PreferenceModel(backbone, "label_token", LABEL_IDS).eval()
    with torch.inference_mode():
        logits = model(**_batch())["logits"]  # (4, 3) float32
    return torch.softmax(logits.double(), dim=-1)


class _Attention(nn.Module):
    """What an attention function reads from its module."""

    training = False

    def __init__(self, head_dim: int, groups: int):
        super().__init__()
        self.head_dim = head_dim
        self.num_key_value_groups = groups


def _causal_mask(seq: int) -> torch.Tensor:
    return torch.triu(torch.full((seq, seq), FP16_MIN), 1)[None, None].half()  # (1, 1, seq, seq), as eager_mask


# -- the attention function on its own ------------------------------------------------------------------------------


@pytest.mark.parametrize("std, overflows", [(3, False), (10, False), (100, True)])
def test_gemma2_softcap_in_fp16_loses_precision_that_fp32_scores_keep(std, overflows):
    """Gemma-2-9B's attention shape (head_dim 256, scaling 1/16, softcap 50, 2 query heads per kv head). The
    reference is float64 on the same fp16 inputs, so only the computation differs."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    gen = torch.Generator().manual_seed(std)
    q = (torch.randn(1, 4, 48, 256, generator=gen) * std).half()  # (batch, heads, seq, head_dim)
    k = (torch.randn(1, 2, 48, 256, generator=gen) * std).half()  # (batch, kv_heads, seq, head_dim)
    v = torch.randn(1, 2, 48, 256, generator=gen).half()
    module, mask = _Attention(256, 2), _causal_mask(48)
    exact, _ = eager_attention_forward(
        module, q.double(), k.double(), v.double(), mask.double(), scaling=1 / 16, softcap=50.0
    )
    naive, _ = eager_attention_forward(module, q, k, v, mask, scaling=1 / 16, softcap=50.0)
    ours, weights = softcap_attention(module, q, k, v, mask, scaling=1 / 16, softcap=50.0)
    raw_scores = torch.matmul(q, k.repeat_interleave(2, dim=1).transpose(2, 3))  # what fp16 eager starts from
    assert bool(torch.isinf(raw_scores).any()) == overflows
    assert torch.isfinite(naive).all()  # even overflowed: tanh(inf) = 1 is the capped value
    assert ours.dtype == torch.float16 and ours.shape == (1, 48, 4, 256) and weights.shape == (1, 4, 48, 48)
    naive_error = (naive.double() - exact).abs().max().item()
    ours_error = (ours.double() - exact).abs().max().item()
    assert ours_error < 3e-3  # the fp16 rounding of outputs of magnitude ~1-4 and of the attention weights
    if not overflows:  # scores in the softcap's active range: fp16 stores them in steps of up to 1/32
        assert naive_error > 1e-2 and naive_error > 5 * ours_error


def test_llama_scores_past_fp16_range_are_nan_in_eager_and_exact_in_fp32():
    """A large component shared by queries and keys (as massive activations make) pushes q.k past 65,504."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 48, 64, generator=gen)
    k = torch.randn(1, 2, 48, 64, generator=gen)
    q[..., 0] += 320  # q.k ~ 320 x 320 = 102,400
    k[..., 0] += 320
    q, k, v = q.half(), k.half(), torch.randn(1, 2, 48, 64, generator=gen).half()
    module, mask = _Attention(64, 2), _causal_mask(48)
    exact, _ = eager_attention_forward(module, q.double(), k.double(), v.double(), mask.double(), scaling=1 / 8)
    naive, _ = eager_attention_forward(module, q, k, v, mask, scaling=1 / 8)
    ours, _ = softcap_attention(module, q, k, v, mask, scaling=1 / 8)
    assert torch.isnan(naive).any()
    assert (ours.double() - exact).abs().max().item() < 1e-2  # fp32 sums of ~1e5 keep ~1e-2 of a score


def test_a_fully_masked_row_stays_finite():
    """Left padding masks every key of a padded query; in fp16, -65,504 plus a negative score rounds to -inf."""
    module = _Attention(16, 1)
    q = torch.full((1, 1, 2, 16), -1.0).half()
    k = torch.ones(1, 1, 2, 16).half()
    v = torch.ones(1, 1, 2, 16).half()
    mask = torch.tensor([[[[FP16_MIN, FP16_MIN], [FP16_MIN, 0.0]]]]).half()  # query 0 sees nothing
    out, _ = softcap_attention(module, q, k, v, mask, scaling=0.25, softcap=50.0)
    assert torch.isfinite(out).all()


# -- whole models ---------------------------------------------------------------------------------------------------


def test_registered_attention_equals_transformers_eager_in_fp32():
    """Mask, sliding window (8 < 24 tokens), grouped queries and softcap as transformers' eager attention does them."""
    name = register_softcap_attention()
    for build in (_gemma2, _llama):
        backbone = build()
        assert (_probs(backbone, torch.float32, name) - _probs(backbone, torch.float32, "eager")).abs().max() < 1e-6


def test_registered_attention_loads_by_name_from_a_checkpoint(tmp_path):
    name = register_softcap_attention()
    from transformers import AutoModelForCausalLM

    _gemma2().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16, attn_implementation=name)
    assert loaded.config._attn_implementation == name and loaded.dtype == torch.float16


@pytest.mark.parametrize("qk_scale", [1, 30, 100])
def test_gemma2_in_fp16_agrees_with_fp32(qk_scale):
    """x30 puts the attention scores in the softcap's active range, x100 past it (q.k overflows in layer 0)."""
    name = register_softcap_attention()
    backbone = _scale(_gemma2(), qk_scale, ("q_proj", "k_proj"))
    reference = _probs(backbone, torch.float32, "eager")
    fp16 = _probs(backbone, torch.float16, name)
    assert torch.isfinite(fp16).all()
    assert (fp16 - reference).abs().max() < 5e-3  # probabilities; measured 8e-5 .. 1.1e-3


def test_llama_in_fp16_with_overflowing_scores_is_nan_in_eager_and_finite_with_fp32_scores():
    name = register_softcap_attention()
    backbone = _scale(_llama(), 1000, ("q_proj", "k_proj"))
    assert torch.isnan(_probs(backbone, torch.float16, "eager")).any()
    assert torch.isfinite(_probs(backbone, torch.float16, name)).all()
    model = PreferenceModel(copy.deepcopy(backbone).half(), "label_token", LABEL_IDS).eval()
    assert locate_nonfinite(model, **_batch()) == "backbone.model.layers.0.self_attn.o_proj"


def test_mlp_overflow_is_caught_by_the_finite_check_naming_row_and_module():
    """gate x up past 65,504 is inf before down_proj: no attention change helps; the run must stop, not write NaN."""
    name = register_softcap_attention()
    backbone = _scale(_gemma2(), 1000, ("gate_proj", "up_proj"))
    assert torch.isfinite(_probs(backbone, torch.float32, "eager")).all()
    probs = _probs(backbone, torch.float16, name).numpy()
    with pytest.raises(NonFiniteProbabilityError, match=r"^row id r0 \(and 3 more of 4 rows\): .* NaN .*--dtype bf16"):
        check_finite_probabilities(probs, ["r0", "r1", "r2", "r3"], "fp16")
    model = PreferenceModel(copy.deepcopy(backbone).half(), "label_token", LABEL_IDS).eval()
    assert locate_nonfinite(model, **_batch()) == "backbone.model.layers.0.mlp.down_proj"


TARGET_LOGITS = torch.tensor(
    [[21.3, 20.95, 19.6], [24.0, 24.5, 23.2], [18.1, 19.0, 18.6], [26.0, 25.2, 25.9]], dtype=torch.float64
)  # (4, 3): close logits where tanh(x / 30) bends


def test_the_final_logit_softcap_runs_in_fp32_on_three_logits():
    """The label rows of lm_head are solved for so that the 4 rows' label logits are TARGET_LOGITS. The head's capped
    logits equal float64 from the same fp16 hidden state; the LM's own fp16 logits (vocab-wide, softcapped in fp16)
    are off by more than 2e-3, which moves probabilities by more than 5e-4."""
    backbone = _gemma2().half()
    batch = _batch()
    with torch.inference_mode():
        hidden = backbone.model(**batch).last_hidden_state  # (4, 24, 64) fp16
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding: the last real token
    hidden_last = hidden[torch.arange(4), last].double()  # (4, 64)
    with torch.no_grad():  # lm_head is tied to the embeddings; the batch holds no label ids
        rows = torch.linalg.pinv(hidden_last) @ TARGET_LOGITS  # (64, 3): hidden_last @ rows = TARGET_LOGITS
        backbone.lm_head.weight[LABEL_IDS] = rows.T.half()
        exact = hidden_last @ backbone.lm_head.weight[LABEL_IDS].double().T  # (4, 3), from the stored fp16 rows
    exact = torch.tanh(exact / 30.0) * 30.0
    model = PreferenceModel(backbone, "label_token", LABEL_IDS).eval()
    with torch.inference_mode():
        ours = model(**batch)["logits"]  # (4, 3) float32
        lm_logits = backbone(**batch).logits[torch.arange(4), last][:, LABEL_IDS]  # (4, 3) fp16, softcapped in fp16
    assert ours.dtype == torch.float32 and lm_logits.dtype == torch.float16
    assert (ours.double() - exact).abs().max() < 1e-5
    assert (lm_logits.double() - exact).abs().max() > 2e-3
    exact_probs = torch.softmax(exact, dim=-1)
    assert (torch.softmax(ours.double(), dim=-1) - exact_probs).abs().max() < 1e-5
    assert (torch.softmax(lm_logits.double(), dim=-1) - exact_probs).abs().max() > 5e-4


# -- choices and checks ---------------------------------------------------------------------------------------------


def test_choose_attention():
    gemma, llama = _gemma2().config, _llama().config
    assert choose_attention("eager", gemma, torch.float16) == FP32_SOFTCAP_ATTENTION
    assert choose_attention("sdpa", gemma, torch.bfloat16) == FP32_SOFTCAP_ATTENTION  # 5.24 refuses sdpa for Gemma-2
    assert choose_attention("eager", gemma, torch.bfloat16) == "eager"
    assert choose_attention("flash_attention_2", gemma, torch.bfloat16) == "flash_attention_2"
    assert choose_attention("sdpa", llama, torch.float16) == "sdpa"


def test_check_finite_probabilities_messages():
    good = np.full((3, 3), 1 / 3)
    check_finite_probabilities(good, ["a", "b", "c"])
    bad = good.copy()
    bad[1, 2] = np.inf
    with pytest.raises(NonFiniteProbabilityError) as error:
        check_finite_probabilities(bad, ["a", "b", "c"], "bf16")
    message = str(error.value)
    assert message.startswith("row id b (1 of 3 rows): predicted probabilities are infinite under dtype bf16")
    assert "not a float16 overflow" in message and "\n" not in message
    with pytest.raises(ValueError, match="do not match 2 row ids"):
        check_finite_probabilities(good, ["a", "b"])
