"""Allowed values of every choice field of the config, written once as Literals.

`pref_core.config.schema` builds its fields from these types; modules that must import without pydantic (the
Kaggle bundle copies this one, see pref_core/kaggle/bundle.py) read the value tuples from here, or call
`require_choice`, instead of keeping copies of their own.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

Template = Literal["seed", "multi_turn"]  # prompt.template
Truncation = Literal["seed", "seed_capped", "proportional"]  # prompt.truncation
Head = Literal["label_token", "classifier"]  # model.head
ModelDtype = Literal["auto", "bf16", "fp16", "fp32"]  # model.dtype
Quantization = Literal["none", "8bit", "4bit"]  # model.quantization
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]  # model.attn_implementation
AllLinear = Literal["all-linear"]  # lora.target_modules' shortcut for every linear layer
LrScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]  # train.lr_scheduler
Optimizer = Literal["auto", "adamw_torch", "adamw_8bit"]  # train.optim
MixedPrecision = Literal["auto", "bf16", "fp16", "no"]  # train.mixed_precision
SwapMode = Literal["none", "random", "both"]  # train.swap
DistributedMode = Literal["ddp", "fsdp"]  # train.distributed
FoldExecution = Literal["subprocess", "in_process", "deployment"]  # cv.execution
CalibrationMethod = Literal["none", "temperature"]  # calibration.method
PostprocessMode = Literal["auto", "off"]  # postprocess.mode
BlendMethod = Literal["mean", "weights", "stack"]  # arena-pref blend --method


def allowed_values(choice: Any) -> tuple[str, ...]:
    """The values a choice alias allows, in declaration order:
    `allowed_values(SwapMode) == ("none", "random", "both")`."""
    values = get_args(choice)
    if not values:
        raise TypeError(f"{choice!r} is not a Literal of choices")
    return values


def require_choice(field: str, value: Any, choice: Any) -> Any:
    """`value` when `choice` allows it, else ValueError naming the dotted field, the value and the allowed values
    (for checks outside pydantic, e.g. `require_choice("train.swap", swap, SwapMode)`)."""
    values = allowed_values(choice)
    if value not in values:
        raise ValueError(f"{field}: got {value!r}; use one of {', '.join(map(repr, values))}")
    return value


TEMPLATES = allowed_values(Template)
TRUNCATIONS = allowed_values(Truncation)
HEADS = allowed_values(Head)
MODEL_DTYPES = allowed_values(ModelDtype)
QUANTIZATIONS = allowed_values(Quantization)
ATTN_IMPLEMENTATIONS = allowed_values(AttnImplementation)
LR_SCHEDULERS = allowed_values(LrScheduler)
OPTIMIZERS = allowed_values(Optimizer)
MIXED_PRECISIONS = allowed_values(MixedPrecision)
SWAP_MODES = allowed_values(SwapMode)
DISTRIBUTED_MODES = allowed_values(DistributedMode)
FOLD_EXECUTIONS = allowed_values(FoldExecution)
CALIBRATION_METHODS = allowed_values(CalibrationMethod)
POSTPROCESS_MODES = allowed_values(PostprocessMode)
BLEND_METHODS = allowed_values(BlendMethod)
