"""bitsandbytes 8-bit and 4-bit (nf4, double quantisation) backbones on CPU: load, train a few steps
through `fine_tune_fold`, reload the adapter.

bitsandbytes 0.50 quantizes and runs both formats on CPU (its CPU backend), so these run in the
default suite. They check the wiring (quantization_config, prepare_model_for_kbit_training, LoRA on
Linear8bitLt / Linear4bit, Trainer placement, peft save/load), not GPU speed or numerics:
tests/gpu/test_gpu.py covers CUDA.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset
from safetensors.torch import load_file

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.model.backbone import load_backbone
from pref_core.model.preference import load_preference_model
from pref_core.model.tiny import build_tiny_checkpoint
from pref_core.predict.inference import predict_probabilities
from pref_core.train.fold import fine_tune_fold
from tests.factories import tiny_config

bnb = pytest.importorskip("bitsandbytes")

pytestmark = pytest.mark.filterwarnings(
    # torch's own torch.utils.mkldnn uses the deprecated decorator; it is imported lazily by transformers/peft.
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

TEXTS = ["the cat sat on the mat Answer:", "a dog ran to the river Answer:", "zebra zebra river Answer:"] * 10
QUANTIZED_LAYER = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = build_tiny_checkpoint(
        TEXTS, tmp_path_factory.mktemp("tiny"), hidden_size=64, intermediate_size=128, vocab_size=300
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer.encode(t) for t in TEXTS]
    dataset = Dataset.from_dict(
        {
            "id": [str(i) for i in range(len(ids))],
            "input_ids": ids,
            "length": [len(x) for x in ids],
            "label": [i % 3 for i in range(len(ids))],
        }
    )
    return folder, dataset


def make_config(quantization: str, head: str = "label_token"):
    return tiny_config(
        head,
        model={"quantization": quantization},
        max_steps=2,
        per_device_batch_size=4,
        learning_rate=1e-2,
        warmup_steps=0,
        optim="adamw_torch",
        mixed_precision="no",
        save_steps=2,
        eval_batch_size=8,
    )


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_backbone_loads_with_bitsandbytes_layers(tiny, quantization):
    folder, _ = tiny
    backbone = load_backbone(make_config(quantization).model, folder)
    kinds = {type(m).__name__ for name, m in backbone.named_modules() if name.endswith("q_proj")}
    assert kinds == {QUANTIZED_LAYER[quantization]}
    assert type(backbone.get_output_embeddings()).__name__ == "Linear"  # the LM head stays unquantized
    if quantization == "4bit":
        config = backbone.config.quantization_config
        assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant


@pytest.mark.parametrize(("quantization", "head"), [("8bit", "label_token"), ("4bit", "classifier")])
def test_quantized_fold_trains_and_reloads(tiny, tmp_path, quantization, head):
    folder, dataset = tiny
    config = make_config(quantization, head)
    result = fine_tune_fold(
        config, dataset.select(range(20)), dataset.select(range(20, 30)), tmp_path, name_or_path=folder
    )
    assert result.metrics["global_step"] == 2
    assert result.metrics["val_log_loss"] == result.metrics["val_log_loss"]  # not NaN

    model, _ = load_preference_model(config.model, result.adapter_dir, name_or_path=folder)
    lora_on_quantized = [  # peft picks its LoRA layer class by platform; the wrapped base layer is what counts
        name
        for name, m in model.named_modules()
        if hasattr(m, "lora_A") and type(m.get_base_layer()).__name__ == QUANTIZED_LAYER[quantization]
    ]
    assert lora_on_quantized, "LoRA should wrap the quantized projections"
    trained = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items()), "two steps should move LoRA B off zero"
    # The reloaded quantized model predicts what the trained one did on the validation rows.
    probs = predict_probabilities(model, dataset.select(range(20, 30)), batch_size=4)
    at_training = pd.read_parquet(result.val_predictions)[list(LABEL_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs, at_training, atol=1e-5)
