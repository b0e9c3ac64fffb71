"""fp16 without NaN: Gemma-2's attention softcap computed in fp32, and a check that every probability is finite.

T4 GPUs (Kaggle's) have no native bf16, so a 9B model runs in fp16 there, whose largest value is 65,504. What
happens in fp16, measured on CPU with tiny random Gemma-2 and Llama models (transformers 5.24; tests/test_fp16.py):

* Attention scores. Gemma-2 computes ``softcap * tanh(q.k * scaling / softcap)`` (softcap 50) in the weights' dtype.
  An overflowing q.k becomes inf, and tanh(inf) = 1 gives exactly the capped value fp32 gives, so PyTorch's softcap
  does not turn an overflow into NaN (kernels that build tanh from exp, inf / inf, do). What fp16 costs is precision:
  the capped scores near +-50 are stored in steps of 1/32, a few percent of attention weight each. Llama has no
  softcap: a q.k past 65,504 is inf and its softmax NaN (inf - inf). `softcap_attention` keeps the scores, softcap,
  mask and softmax in fp32 (the query and key are upcast), which removes both; the weighted sum of the values stays
  in fp16. Registered as an attention implementation (transformers' AttentionInterface), so the model code is
  unchanged: load with ``attn_implementation=FP32_SOFTCAP_ATTENTION`` after `register_softcap_attention()`.
* The MLP. gate x up overflows in fp16 before down_proj in both models when activations are large (the NaN that
  unsloth #5092 traced in Gemma-4); no attention change helps there. The only guard is the check below, which stops
  the run naming the row instead of writing NaN into a submission.
* The final-logit softcap (Gemma-2: 30). Our heads never compute the LM logits over the vocabulary: they read the
  hidden state of the last real token and project it in fp32 (pref_core.modeling.PreferenceModel._head), the
  label_token head applying the softcap in fp32 to 3 logits. So it cannot overflow, and fp16 enters only through the
  hidden state (the final norm's output). Gemma2ForCausalLM's own path would round the capped logits near +-30 to
  steps of 1/64 and spend (batch, seq, 256k) fp16 logits.

Attention memory: the fp32 scores take twice eager's fp16 scores, (batch, heads, seq, seq) x 4 bytes per layer at a
time; the token budget (predict.batching) bounds batch x seq, so lower it for long rows.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from pref_core.errors import UserError

# Names under which `register_softcap_attention` registers the attention below (transformers' AttentionInterface).
FP32_SOFTCAP_ATTENTION = "eager_fp32_softcap"


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * groups, seq, head_dim): grouped-query keys per head."""
    if groups == 1:
        return states
    batch, kv_heads, seq, head_dim = states.shape
    return (
        states[:, :, None]
        .expand(batch, kv_heads, groups, seq, head_dim)
        .reshape(batch, kv_heads * groups, seq, head_dim)
    )


def softcap_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    softcap: Optional[float] = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with the scores, softcap, mask and softmax in fp32 (transformers' attention signature).

    query (batch, heads, q_len, head_dim), key and value (batch, kv_heads, kv_len, head_dim), attention_mask additive
    (batch, 1, q_len, kv_len) or None. Returns the output (batch, q_len, heads, head_dim) in the value's dtype and the
    attention weights (batch, heads, q_len, kv_len) in that dtype too. Other keywords (sliding_window: already in the
    mask) are ignored, as transformers' eager attention does.
    """
    if scaling is None:
        scaling = module.head_dim**-0.5
    groups = getattr(module, "num_key_value_groups", 1)
    key = _repeat_kv(key, groups)
    value = _repeat_kv(value, groups)
    # fp32 from the start: a q.k past fp16's 65,504 stays finite, and the capped scores keep their precision.
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling  # (batch, heads, q_len, kv_len)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        # In fp32 a masked score stays finite (fp16: -65,504 - 50 rounds to -inf, and a fully masked row gives NaN).
        scores = scores + attention_mask.float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)  # (batch, heads, q_len, head_dim)
    return output.transpose(1, 2).contiguous(), weights


def register_softcap_attention() -> str:
    """Register `softcap_attention` (and eager's additive mask for it) under FP32_SOFTCAP_ATTENTION; returns the name.

    Idempotent. Then ``from_pretrained(..., attn_implementation=name)`` or ``model.set_attn_implementation(name)``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    AttentionInterface.register(FP32_SOFTCAP_ATTENTION, softcap_attention)
    if FP32_SOFTCAP_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(FP32_SOFTCAP_ATTENTION, eager_mask)
    return FP32_SOFTCAP_ATTENTION


def choose_attention(requested: str, text_config, dtype: torch.dtype) -> str:
    """The attention implementation to load a model with, for `requested` (model.attn_implementation) and `dtype`.

    A model with attention softcapping (Gemma-2) gets FP32_SOFTCAP_ATTENTION in fp16 and whenever sdpa was asked for
    (transformers 5.24 refuses sdpa for Gemma-2: it cannot softcap); eager and flash_attention_2 (which softcaps in
    fp32 itself) stay in bf16/fp32. Models without softcapping keep `requested`. Call register_softcap_attention()
    before loading with the name this returns.
    """
    if getattr(text_config, "attn_logit_softcapping", None) is None:
        return requested
    if dtype == torch.float16 or requested == "sdpa":
        return FP32_SOFTCAP_ATTENTION
    return requested


# -- finite probabilities ------------------------------------------------------------------------------------------


class NonFiniteProbabilityError(UserError, ValueError):
    """A predicted probability is NaN or infinite: the run must stop rather than write it into a submission."""


def check_finite_probabilities(probs: np.ndarray, row_ids: Sequence, dtype: str = "fp16") -> None:
    """Raise NonFiniteProbabilityError, in one line naming the first bad row's id and the fix, when any row of
    `probs` (n, 3) holds a NaN or an infinity. `row_ids` (n,) are the rows' ids (the test CSV's id column); `dtype`
    is the precision the model ran in (model.dtype / --dtype).
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(row_ids):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(row_ids)} row ids")
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size == 0:
        return
    first = int(bad[0])
    kind = "NaN" if np.isnan(probs[first]).any() else "infinite"
    more = f" (and {bad.size - 1} more of {len(probs)} rows)" if bad.size > 1 else f" (1 of {len(probs)} rows)"
    if dtype == "fp16":
        fix = (
            "float16 overflowed inside the model: rerun with --dtype bf16 (emulated on a T4: slower) or "
            "--dtype fp32 (CPU, or a GPU with the memory)"
        )
    else:
        fix = f"this is not a float16 overflow (dtype {dtype}): check the adapters and the base model for NaN weights"
    raise NonFiniteProbabilityError(
        f"row id {row_ids[first]}{more}: predicted probabilities are {kind} under dtype {dtype}; {fix}"
    )


def locate_nonfinite(model: nn.Module, **inputs) -> Optional[str]:
    """The name of the first module (in call order) whose output holds a NaN or an infinity when `model(**inputs)`
    runs, or None: to say where an overflow starts (e.g. ``backbone.model.layers.0.mlp.down_proj``) for one bad row.
    """
    found: list[str] = []

    def hook(module, args, output, name):
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if not found and torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            found.append(name)

    handles = [
        m.register_forward_hook(lambda mod, a, out, name=name: hook(mod, a, out, name))
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None
