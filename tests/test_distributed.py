"""train.distributed=fsdp: the Trainer arguments it builds (pref_core.train.distributed), read back by the real
transformers TrainingArguments and accelerate FSDP plugin on CPU.

accelerate runs FSDP only on accelerators (AcceleratorState takes the FSDP path for multi-GPU types only; a
multi-CPU run stays DDP), so no FSDP fold trains here: a 2-GPU fold is tests/gpu/test_fsdp_fold.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pref_core.config.loading import load_config
from pref_core.config.schema import ConfigError
from pref_core.train import distributed

ROOT = Path(__file__).resolve().parents[1]


def _config(*overrides: str):
    return load_config(
        ROOT / "configs" / "tiny.yaml", ["train.num_processes=2", "train.gradient_accumulation_steps=2", *overrides]
    )


def _train_and_model(*overrides: str):
    """The two sections the FSDP arguments read, of the tiny recipe with `overrides`."""
    config = _config(*overrides)
    return config.train, config.model


@pytest.fixture
def restored_environment():
    """accelerate's FSDP plugin exports its settings as FSDP_* variables: keep them out of later tests."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


def test_ddp_and_a_single_process_add_nothing():
    assert distributed.fsdp_training_arguments(*_train_and_model("train.distributed=ddp")) == {}
    single = load_config(ROOT / "configs" / "tiny.yaml", ["train.distributed=fsdp"])
    assert distributed.fsdp_training_arguments(single.train, single.model) == {}


def test_fsdp_on_cpu_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^train.distributed=fsdp needs CUDA GPUs .* set train.distributed=ddp$"):
        distributed.fsdp_training_arguments(*_train_and_model("train.distributed=fsdp"))


def test_fsdp_on_gpus_needs_the_experimental_switch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(distributed.EXPERIMENTAL_ENV, raising=False)
    config = _config("train.distributed=fsdp")
    with pytest.raises(ValueError, match=distributed.EXPERIMENTAL_ENV):
        distributed.fsdp_training_arguments(config.train, config.model)
    monkeypatch.setenv(distributed.EXPERIMENTAL_ENV, "1")
    assert distributed.fsdp_training_arguments(config.train, config.model) == {
        "fsdp": True,
        "fsdp_config": distributed.fsdp_config(config.model),
    }


def test_an_unknown_strategy_names_the_field():
    with pytest.raises(ConfigError, match="train.distributed"):
        _config("train.distributed=zero3")


def test_transformers_and_accelerate_read_the_arguments_as_fsdp2_full_shard_per_decoder_layer(restored_environment):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    config = _config("train.distributed=fsdp", "model.gradient_checkpointing=true")
    args = TrainingArguments(
        output_dir="unused", fsdp=True, fsdp_config=distributed.fsdp_config(config.model), use_cpu=True, report_to=[]
    )
    assert args.fsdp_plugin_args == {
        "fsdp_version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_ram_efficient_loading": True,
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": True,
        "reshard_after_forward": True,
    }
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    backbone = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
    )
    model = get_peft_model(backbone, LoraConfig(r=4, target_modules="all-linear"))
    plugin.set_auto_wrap_policy(model)
    wraps = fsdp2_prepare_auto_wrap_policy(plugin, model)
    # One FSDP unit per decoder layer, LoRA weights inside their layer's unit (found through _no_split_modules).
    assert [name for name, module in model.named_modules() if wraps(module)] == [
        "base_model.model.model.layers.0",
        "base_model.model.model.layers.1",
    ]


def test_a_4bit_base_is_stored_in_the_compute_dtype_under_fsdp():
    from transformers import BitsAndBytesConfig

    assert (
        distributed.fsdp_quantization_arguments(
            *_train_and_model("train.distributed=ddp", "model.quantization=4bit"), torch.bfloat16
        )
        == {}
    )
    assert distributed.fsdp_quantization_arguments(*_train_and_model("train.distributed=fsdp"), torch.bfloat16) == {}
    extra = distributed.fsdp_quantization_arguments(
        *_train_and_model("train.distributed=fsdp", "model.quantization=4bit"), torch.bfloat16
    )
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, **extra)
    assert quantization.bnb_4bit_quant_storage == torch.bfloat16


def test_a_cpu_fold_with_fsdp_stops_where_its_training_arguments_are_built(monkeypatch, tmp_path):
    from pref_core.train.trainer import build_training_arguments

    monkeypatch.setenv("WORLD_SIZE", "2")  # one of the fold's two torchrun processes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^train.distributed=fsdp needs CUDA GPUs"):
        build_training_arguments(*_train_and_model("train.distributed=fsdp"), tmp_path)


def test_the_preflight_refuses_fsdp_before_any_work(monkeypatch):
    """The CLI's runtime check (run before the output folder, tracking store or Prefect exist) says the
    same one line as the Trainer arguments would, inside the fold's processes, much later."""
    from pref_core.train.checks import MachineError, check_runtime

    monkeypatch.delenv(distributed.EXPERIMENTAL_ENV, raising=False)
    config = _config("train.num_processes=2", "train.distributed=fsdp")
    with pytest.raises(MachineError, match=r"train.distributed=fsdp needs CUDA GPUs.*set train.distributed=ddp"):
        check_runtime(config.model, config.train, cuda_available=False)
    with pytest.raises(MachineError, match=r"train.distributed=fsdp is not finished.*ARENA_PREF_FSDP_EXPERIMENTAL=1"):
        check_runtime(config.model, config.train, cuda_available=True)
    ddp = _config("train.num_processes=2")
    assert check_runtime(ddp.model, ddp.train, cuda_available=False) == []
