"""Checks before training, so that a wrong input or machine fails in seconds and names every problem.

* `check_runtime`: what the config needs from this machine (bitsandbytes, CUDA, FSDP, flash-attn), checked by the
  CLI's preflight before anything is created.
* `check_fold_inputs`: the tokenized splits (`check_fold_dataset`), the columns train.swap and distill need
  (`check_train_inputs`) and the teacher coverage (`check_teacher_coverage`), before the fold's model loads.
* `check_world_size`: train.num_processes against how this process was started (torchrun).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Optional

import numpy as np

from pref_core.config.schema import DistillConfig, ModelConfig, TrainConfig
from pref_core.data.labels import NUM_CLASSES
from pref_core.errors import UserError

logger = logging.getLogger(__name__)


class MachineError(UserError, ValueError):
    """This machine lacks what the config needs (bitsandbytes, a CUDA GPU); the message is one line with the fix."""


# -- the machine ----------------------------------------------------------------------------------------------------


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_runtime(model: ModelConfig, train: TrainConfig, cuda_available: Optional[bool] = None) -> list[str]:
    """What the config needs from this machine. Raises `MachineError` (one line) for a quantized base, an 8-bit
    optimizer or FSDP without bitsandbytes or CUDA; returns warnings (fallbacks the run will take)."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    needs = []
    if model.quantization != "none":
        needs.append(f"model.quantization={model.quantization}")
    if train.optim == "adamw_8bit":
        needs.append("train.optim=adamw_8bit")
    if needs:
        what = " and ".join(needs)
        if not _installed("bitsandbytes"):
            raise MachineError(
                f"{what} needs bitsandbytes, which is not installed; `pip install 'arena-pref[gpu]'` "
                "(or set model.quantization=none and train.optim=auto)"
            )
        if not cuda_available:
            raise MachineError(
                f"{what} needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); run on a GPU "
                "machine, or set model.quantization=none and train.optim=auto for CPU"
            )
    from pref_core.train.distributed import check_fsdp

    try:
        check_fsdp(train, cuda_available)
    except ValueError as err:
        raise MachineError(str(err)) from None
    warnings = []
    if model.attn_implementation == "flash_attention_2" and not (cuda_available and _installed("flash_attn")):
        warnings.append(
            "model.attn_implementation=flash_attention_2 but flash-attn is not usable here (package missing or "
            "no CUDA GPU); using sdpa instead (`pip install flash-attn` on the GPU machine to use it)"
        )
    return warnings


# -- the fold's inputs ----------------------------------------------------------------------------------------------


def check_fold_inputs(train: TrainConfig, distill: DistillConfig, train_ds, val_ds) -> None:
    """Every check of a fold's datasets, in the order a user would fix them."""
    check_fold_dataset(train_ds, "train")
    check_fold_dataset(val_ds, "validation")
    check_train_inputs(train, distill, train_ds)
    if distill.enabled:
        check_teacher_coverage(distill, train_ds)


def check_fold_dataset(dataset, name: str) -> None:
    """Fail early, naming every problem, when a tokenized split cannot be trained or scored."""
    problems = []
    missing = [c for c in ("id", "input_ids", "label") if c not in dataset.column_names]
    if missing:
        problems.append(
            f"missing columns {missing} (have {dataset.column_names}); tokenize with pref_core.text.tokenization"
        )
    if len(dataset) == 0:
        problems.append("no rows")
    if "label" in dataset.column_names and len(dataset):
        labels = np.asarray(dataset["label"])
        bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
        if bad.size:
            problems.append(
                f"{bad.size} rows without a class label 0..{NUM_CLASSES - 1} (first rows {bad[:5].tolist()})"
            )
    if problems:
        raise ValueError(f"{name} dataset: " + "; ".join(problems))


def check_train_inputs(train: TrainConfig, distill: DistillConfig, train_ds) -> None:
    """Fail early when the train dataset lacks the columns train.swap or distill.teacher_csv need (all problems)."""
    problems = []
    if train.swap != "none" and "input_ids_swap" not in train_ds.column_names:
        problems.append(
            f"train.swap={train.swap} needs an 'input_ids_swap' column (have {train_ds.column_names}); "
            "tokenize the train rows with the swapped view (tokenize_frame(..., with_swap=True)), "
            "or set train.swap=none"
        )
    if distill.enabled and "teacher_probs" not in train_ds.column_names:
        problems.append(
            f"distill.teacher_csv={str(distill.teacher_csv)!r} is set but the train dataset has no "
            "'teacher_probs' column; attach it with pref_core.data.teachers.attach_teacher_probs(train_ds, "
            "read_teacher_probs(distill.teacher_csv)), or set distill.teacher_csv=null"
        )
    if problems:
        raise ValueError("train dataset: " + "; ".join(problems))


def count_teacher_rows(train_ds) -> int:
    """Rows of a dataset with a teacher (all of them when there is teacher_probs but no has_teacher column)."""
    if "has_teacher" in train_ds.column_names:
        return int(np.count_nonzero(np.asarray(train_ds["has_teacher"], dtype=bool)))
    return len(train_ds) if "teacher_probs" in train_ds.column_names else 0


def check_teacher_coverage(distill: DistillConfig, train_ds) -> int:
    """Log how many train rows have a teacher and return the count; fail when none has (the ids cannot match)."""
    with_teacher = count_teacher_rows(train_ds)
    logger.info(
        "distillation: %d of %d train rows have a teacher (the others train on their hard label only); "
        "hard_weight=%g kl_weight=%g temperature=%g",
        with_teacher,
        len(train_ds),
        distill.hard_weight,
        distill.kl_weight,
        distill.temperature,
    )
    if with_teacher == 0:
        raise ValueError(
            f"distill.teacher_csv={str(distill.teacher_csv)!r}: none of the {len(train_ds)} train rows has a teacher "
            "row, so its ids do not match the train ids; check the file (ids as in data.train_csv), or set "
            "distill.teacher_csv=null"
        )
    if distill.hard_weight == 0 and with_teacher < len(train_ds):
        logger.warning(
            "distill.hard_weight=0: the %d train rows without a teacher add no loss; set distill.hard_weight "
            "above 0 to train on their labels",
            len(train_ds) - with_teacher,
        )
    return with_teacher


# -- processes -----------------------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes training this fold together: torchrun's WORLD_SIZE, 1 when not launched by it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a distributed fold (or the only process): the one that writes files and logs."""
    return int(os.environ.get("RANK", "0")) == 0


def check_world_size(train_config: TrainConfig) -> int:
    """train.num_processes, checked against how this process was started (torchrun for more than one)."""
    launched = world_size()
    if launched != train_config.num_processes:
        raise ValueError(
            f"train.num_processes={train_config.num_processes} but this process is one of {launched}: a fold "
            "with several processes is started with torchrun (the pipeline does it; see tasks/training.py), "
            f"so either run it through the pipeline or set train.num_processes={launched}"
        )
    return launched
