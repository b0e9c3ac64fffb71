"""Precision: fp32 label logits under bf16 weights and autocast; `auto` dtype/precision/optimizer by GPU."""

from __future__ import annotations

import logging

import pytest
import torch

from pref_core.config.schema import ModelConfig, TrainConfig
from pref_core.model.backbone import resolve_dtype
from pref_core.model.preference import PreferenceModel
from pref_core.train.trainer import resolve_mixed_precision, resolve_optim

LABEL_IDS = [5, 6, 7]
TARGET_LOGITS = torch.tensor([21.30, 20.95, 19.60], dtype=torch.float64)  # the example


def _bf16_model(head: str) -> PreferenceModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    backbone = LlamaForCausalLM(config).to(torch.bfloat16)
    return PreferenceModel(backbone, head, LABEL_IDS if head == "label_token" else None)


def _set_label_rows(model: PreferenceModel, hidden: torch.Tensor) -> torch.Tensor:
    """Scale the label rows of lm_head (bf16) so that hidden @ rows.T is near TARGET_LOGITS; return the exact
    logits of the stored bf16 values, computed in float64."""
    weight = model.backbone.get_output_embeddings().weight
    with torch.no_grad():
        rows = weight[LABEL_IDS].double()  # (3, hidden)
        raw = hidden.double() @ rows.T  # (1, 3)
        weight[LABEL_IDS] = (rows * (TARGET_LOGITS / raw[0])[:, None]).to(torch.bfloat16)
        return hidden.double() @ weight[LABEL_IDS].double().T  # (1, 3)


@pytest.mark.parametrize("autocast", [False, True])
def test_label_logits_are_fp32_where_bf16_would_move_probabilities(autocast):
    model = _bf16_model("label_token")
    hidden = torch.randn(1, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)  # (1, hidden)
    reference = torch.softmax(_set_label_rows(model, hidden), dim=-1)  # fp64 from the stored bf16 values
    rows = model.backbone.get_output_embeddings().weight[LABEL_IDS]
    bf16_probs = torch.softmax((hidden @ rows.T).double(), dim=-1)  # what a bf16 projection gives
    assert (bf16_probs - reference).abs().max() > 1e-2  # the case the fp32 projection must fix
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model._head(hidden)  # (1, 3)
    assert logits.dtype == torch.float32
    assert torch.allclose(torch.softmax(logits.double(), dim=-1), reference, atol=1e-5)


def test_classifier_logits_stay_fp32_under_bf16_autocast():
    model = _bf16_model("classifier")
    hidden = (20 * torch.randn(4, 64, generator=torch.Generator().manual_seed(2))).to(torch.bfloat16)
    score = model.score
    expected = hidden.double() @ score.weight.double().T + score.bias.double()  # (4, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model._head(hidden)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits.double(), expected, atol=1e-4)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of a given compute capability; is_bf16_supported says True, as it does with emulation."""

    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return install


@pytest.mark.parametrize(
    ("capability", "dtype", "precision"),
    [
        ((7, 5), torch.float16, "fp16"),  # T4 (Kaggle): bf16 only emulated
        ((7, 0), torch.float16, "fp16"),  # V100
        ((8, 0), torch.bfloat16, "bf16"),  # A100
        ((9, 0), torch.bfloat16, "bf16"),  # H100
    ],
)
def test_auto_dtype_and_precision_follow_native_bf16(fake_gpu, capability, dtype, precision):
    fake_gpu(capability)
    assert resolve_dtype(ModelConfig(name_or_path="x/y")) == dtype
    assert resolve_mixed_precision(TrainConfig()) == precision
    assert resolve_dtype(ModelConfig(name_or_path="x/y", dtype="fp32")) == torch.float32  # explicit wins


def test_auto_dtype_and_precision_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype(ModelConfig(name_or_path="x/y")) == torch.float32
    assert resolve_mixed_precision(TrainConfig()) == "no"


def test_auto_optimizer_falls_back_with_a_warning_without_bitsandbytes(fake_gpu, monkeypatch, caplog):
    import importlib.util

    fake_gpu((8, 0))
    assert resolve_optim(TrainConfig()) == "adamw_bnb_8bit"  # bitsandbytes is installed here
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with caplog.at_level(logging.WARNING, logger="pref_core.train.trainer"):
        assert resolve_optim(TrainConfig()) == "adamw_torch"
    assert "bitsandbytes is not installed" in caplog.text
