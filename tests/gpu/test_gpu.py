"""CUDA-only checks (opt-in: `pytest -m gpu`): bf16 mixed precision and 4-bit QLoRA training steps,
8-bit AdamW from bitsandbytes, non-reentrant gradient checkpointing and padding to multiples of 8.

Skipped without a CUDA GPU. They use the tiny offline model, so they check the wiring, not speed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pref_core.config import parse_config
from pref_core.labels import LABEL_COLUMNS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

TEXTS = ["the cat sat on the mat Answer:", "a dog ran to the river Answer:", "zebra zebra river Answer:"] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from pref_core.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(TEXTS, tmp_path_factory.mktemp("tiny"), hidden_size=64, intermediate_size=128, vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer.encode(t) for t in TEXTS]
    dataset = Dataset.from_dict(
        {"id": [str(i) for i in range(len(ids))], "input_ids": ids, "length": [len(x) for x in ids], "label": [i % 3 for i in range(len(ids))]}
    )
    return folder, dataset


def make_config(quantization: str, head: str):
    return parse_config(
        {
            "model": {"tiny": {}, "head": head, "dtype": "bf16", "quantization": quantization, "gradient_checkpointing": True},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "all-linear"},
            # optim/mixed_precision auto: 8-bit AdamW and bf16 autocast on a bf16-capable GPU.
            "train": {"max_steps": 2, "per_device_batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 0,
                      "optim": "auto", "mixed_precision": "auto", "save_steps": 2, "eval_batch_size": 8},
        }
    )


@pytest.mark.parametrize(("quantization", "head"), [("none", "label_token"), ("4bit", "classifier"), ("4bit", "label_token")])
def test_cuda_training_step(tiny, tmp_path, quantization, head):
    from pref_core.inference import predict
    from pref_core.modeling import load_preference_model
    from pref_core.training import build_training_arguments, resolve_optim, train_fold

    if not torch.cuda.is_bf16_supported():
        pytest.skip("bf16 needs an Ampere or newer GPU")
    folder, dataset = tiny
    config = make_config(quantization, head)
    args = build_training_arguments(config, tmp_path / "args")
    assert args.bf16 and args.optim.value == resolve_optim(config.train, quantized=quantization != "none")

    result = train_fold(config, dataset.select(range(40)), dataset.select(range(40, 60)), tmp_path / "fold", name_or_path=folder)
    assert result.metrics["global_step"] == 2
    assert math.isfinite(result.metrics["val_log_loss"]) and math.isfinite(result.metrics["train_loss"])

    model, _ = load_preference_model(config, result.adapter_dir, name_or_path=folder)
    assert next(model.parameters()).is_cuda
    probs = predict(model, dataset.select(range(40, 60)), batch_size=8, pad_to_multiple_of=8)
    at_training = pd.read_parquet(result.val_predictions_path)[list(LABEL_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # bf16 with other batch shapes: same model, small rounding differences.
    np.testing.assert_allclose(probs, at_training, atol=2e-2)


def test_label_token_head_matches_full_logits_in_bf16(tiny):
    from transformers import AutoTokenizer

    from pref_core.labels import get_label_token_ids
    from pref_core.modeling import build_preference_model, load_backbone

    folder, _ = tiny
    config = make_config("none", "label_token")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    backbone = load_backbone(config.model, folder).cuda().eval()
    model = build_preference_model(config.model, backbone, tokenizer).cuda()
    ids = torch.tensor([tokenizer.encode(TEXTS[0])], device="cuda")
    label_ids = get_label_token_ids(tokenizer, config.model.label_tokens)
    with torch.no_grad():
        ours = model(input_ids=ids)["logits"]
        full = backbone(input_ids=ids).logits[:, -1, label_ids].float()  # (1, 3)
    torch.testing.assert_close(ours, full, atol=2e-2, rtol=2e-2)
