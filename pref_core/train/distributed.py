"""How the processes of one fold share the model (train.distributed): what FSDP adds to the Trainer's arguments.

`ddp` (the default) gives every process the whole model and a share of each step's rows; its two Trainer
arguments sit with the others in pref_core.train.trainer.build_training_arguments. `fsdp` shards the model
over the processes (models that do not fit one GPU): FSDP2 through accelerate, every decoder layer its own
unit (accelerate's transformer-based wrap, which reads the model's own ``_no_split_modules``:
LlamaDecoderLayer, Gemma2DecoderLayer, ...), parameters resharded after each forward (the
"full_shard auto_wrap" of FSDP1), the base weights read by rank 0 alone and broadcast
(cpu_ram_efficient_loading), checkpoints as one full state dict (the adapter files the resume check and
the adapter export read). FSDP2 shards parameter by parameter, so frozen base weights and trainable LoRA
weights share a unit without FSDP1's ``use_orig_params``; a 4-bit base needs its packed weights stored in
the compute dtype (:func:`fsdp_quantization_arguments`) to be sharded at all.

accelerate runs FSDP only on accelerators (a CPU run would silently be DDP), so a CPU fold refuses it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of the CLI's preflight, which imports check_fsdp
    import torch

    from pref_core.config.schema import ModelConfig, TrainConfig

# Until a fold gathers its sharded adapter and predicts on every rank (pref_core.train.fold saves and predicts
# on rank 0 alone), an FSDP fold would stall there; this switch lets the GPU check run it on purpose.
EXPERIMENTAL_ENV = "ARENA_PREF_FSDP_EXPERIMENTAL"


def fsdp_config(model: "ModelConfig") -> dict[str, Any]:
    """The Trainer's ``fsdp_config`` for train.distributed=fsdp (transformers' keys, FSDP2)."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer (_no_split_modules)
        "reshard_after_forward": True,  # full shard: parameters gathered per layer, freed after its forward
        "cpu_ram_efficient_loading": True,  # rank 0 reads the weights, the others receive their shards
        "state_dict_type": "FULL_STATE_DICT",  # checkpoints keep adapter_model.safetensors (resume, export)
        "activation_checkpointing": model.gradient_checkpointing,
    }


def check_fsdp(train: "TrainConfig", cuda_available: bool) -> None:
    """Raise ValueError, in one line, where train.distributed=fsdp cannot run: on CPU (accelerate would
    quietly fall back to DDP), and unless $ARENA_PREF_FSDP_EXPERIMENTAL=1 (see EXPERIMENTAL_ENV). The CLI's
    preflight calls it, so a run stops before any work; the Trainer arguments call it again for direct use."""
    if train.distributed != "fsdp" or train.num_processes == 1:
        return
    if not cuda_available:
        raise ValueError(
            "train.distributed=fsdp needs CUDA GPUs (accelerate shards models only on accelerators; on CPU "
            "the processes would each hold the whole model); on CPU set train.distributed=ddp"
        )
    if os.environ.get(EXPERIMENTAL_ENV) != "1":
        raise ValueError(
            "train.distributed=fsdp is not finished: a fold still saves its adapter and predicts on rank 0 "
            "alone, which a sharded model cannot do; use train.distributed=ddp (models that fit one GPU), or "
            f"set {EXPERIMENTAL_ENV}=1 to try it"
        )


def fsdp_training_arguments(train: "TrainConfig", model: "ModelConfig") -> dict[str, Any]:
    """TrainingArguments keywords of train.distributed=fsdp: ``{}`` for one process (nothing to shard over).
    Raises ValueError where FSDP cannot run (:func:`check_fsdp`)."""
    if train.distributed != "fsdp" or train.num_processes == 1:
        return {}
    import torch

    check_fsdp(train, torch.cuda.is_available())
    return {"fsdp": True, "fsdp_config": fsdp_config(model)}


def fsdp_quantization_arguments(
    train: "TrainConfig", model: "ModelConfig", compute_dtype: "torch.dtype"
) -> dict[str, Any]:
    """BitsAndBytesConfig keywords a 4-bit base needs under FSDP: its packed weights stored in the compute
    dtype, so FSDP2 shards them like the others (uint8 storage leaves a full copy on every GPU)."""
    if train.distributed != "fsdp" or train.num_processes == 1 or model.quantization != "4bit":
        return {}
    return {"bnb_4bit_quant_storage": compute_dtype}
