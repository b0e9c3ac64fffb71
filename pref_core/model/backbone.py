"""Backbone loading: the causal LM under the preference head, with model.dtype, model.quantization,
model.attn_implementation and model.gradient_checkpointing applied, straight onto its device.

`pref_core.model.preference` puts the head and LoRA on what `load_backbone` returns;
pref_core.train.trainer.resolve_mixed_precision reads `native_bf16` to pick the autocast dtype that matches the weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch

if TYPE_CHECKING:
    from pref_core.config.schema import ModelConfig

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    """The model.dtype / --dtype name of a torch dtype: torch.float16 -> "fp16"."""
    return {value: key for key, value in _DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


def native_bf16() -> bool:
    """True on a CUDA GPU with bf16 tensor cores (compute capability 8.0+: A100, A10, L4, H100, RTX 30xx+).

    Not torch.cuda.is_bf16_supported(): it also counts emulated bf16, which T4 and V100 (7.x, Kaggle's GPUs)
    run many times slower than fp16.
    """
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def resolve_dtype(model_config: "ModelConfig") -> torch.dtype:
    """Weight dtype of the backbone: model.dtype, where ``auto`` means bf16 on a GPU with native bf16,
    fp16 on an older CUDA GPU (fp32 weights of a multi-billion model would not fit) and fp32 on CPU."""
    if model_config.dtype != "auto":
        return _DTYPES[model_config.dtype]
    if torch.cuda.is_available():
        return torch.bfloat16 if native_bf16() else torch.float16
    return torch.float32


def resolve_attn_implementation(model_config: "ModelConfig") -> str:
    """model.attn_implementation, falling back to sdpa when flash-attn is not installed or there is no GPU."""
    wanted = model_config.attn_implementation
    if wanted == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not (torch.cuda.is_available() and is_flash_attn_2_available()):
            logger.warning(
                "model.attn_implementation=flash_attention_2 but flash-attn is not usable here "
                "(package missing or no CUDA GPU); using sdpa instead"
            )
            return "sdpa"
    return wanted


def attention_for(source: str, revision: Optional[str], requested: str, dtype: torch.dtype) -> str:
    """The attention implementation to load `source` with: `requested`, except for a model with attention
    softcapping (Gemma-2) in fp16 or under sdpa, which gets eager attention with the scores in fp32
    (pref_core.model.precision.choose_attention; registered here)."""
    from transformers import AutoConfig

    from pref_core.model.precision import FP32_SOFTCAP_ATTENTION, choose_attention, register_softcap_attention

    config = AutoConfig.from_pretrained(source, revision=revision)
    chosen = choose_attention(requested, config.get_text_config(), dtype)
    if chosen == FP32_SOFTCAP_ATTENTION:
        register_softcap_attention()
    return chosen


def build_quantization_config(model_config: "ModelConfig"):
    """BitsAndBytesConfig for model.quantization (None when it is ``none``)."""
    if model_config.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if model_config.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=resolve_dtype(model_config),
    )


def resolve_model_source(model_config: "ModelConfig", name_or_path: Optional[Union[str, Path]] = None) -> str:
    """Where to load the base model from: the explicit argument, else model.name_or_path."""
    source = name_or_path if name_or_path is not None else model_config.name_or_path
    if source is None:
        raise ValueError(
            "model.name_or_path is not set and no name_or_path was passed: for model.tiny, build the tiny "
            "checkpoint first (pref_core.model.tiny.build_tiny_checkpoint) and pass its folder as name_or_path"
        )
    return str(source)


def resolve_load_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """The device a base model is loaded onto: `device`, else this process's current CUDA device (a fold worker
    sees one GPU through CUDA_VISIBLE_DEVICES), else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_backbone(
    model_config: "ModelConfig",
    name_or_path: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
):
    """Load the causal LM named by model.name_or_path (or `name_or_path`, e.g. a built tiny model folder).

    Applies model.dtype, model.quantization (bitsandbytes 8-bit, or 4-bit nf4 with double quantisation),
    model.attn_implementation (Gemma-2 in fp16: fp32 attention scores, see `attention_for`) and
    model.gradient_checkpointing (non-reentrant). The weights stay frozen
    here; `build_model` adds the trainable parts.

    Weights go straight from the (memory-mapped) safetensors files onto `device` (default: see
    resolve_load_device) through device_map, quantized or not: no full copy of an 8B model in host RAM
    per fold (bench/load_memory.py measures it).
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(model_config, name_or_path)
    dtype = resolve_dtype(model_config)
    kwargs = {
        "dtype": dtype,
        "attn_implementation": attention_for(
            source, model_config.revision, resolve_attn_implementation(model_config), dtype
        ),
        "revision": model_config.revision,
    }
    quantization_config = build_quantization_config(model_config)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    # Also required for bitsandbytes layers, which cannot be moved after loading.
    kwargs["device_map"] = {"": resolve_load_device(device)}
    logger.info(
        "loading backbone %s onto %s (dtype=%s, quantization=%s, attn=%s)",
        source,
        kwargs["device_map"][""],
        kwargs["dtype"],
        model_config.quantization,
        kwargs["attn_implementation"],
    )
    backbone = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    backbone.config.use_cache = False  # no generation here; the KV cache would only cost memory
    if model_config.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (no input-grad hack) and with peft.
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return backbone
