"""Train one cross-validation fold with the transformers Trainer.

`fine_tune_fold` builds the LoRA model, trains it on one fold's rows, evaluates on
the held-out rows (metrics ``val_log_loss`` / ``val_accuracy``, seen by the
caller's callbacks in ``on_evaluate`` and ``on_log``), writes the held-out
predictions and the final adapter, and resumes from its own latest checkpoint
when it finds one (so a killed fold continues where it stopped, bit for bit).

Two training-only options change what a step sees (validation and inference never do):

* ``train.swap``: a/b swap augmentation. The Trainer samples a `SwapViewDataset` (both orders of every
  pair) through `EpochSeededSampler`, which picks one order per pair and epoch (``random``) or both side
  by side in the same batch (``both``); labels and teacher probabilities are exchanged with the inputs.
* ``distill``: soft labels from a teacher (data.attach_teacher_probs); `PreferenceTrainer.compute_loss`
  trains on modeling.distillation_loss instead of the model's plain cross-entropy.

Layout of `output_dir`::

    checkpoints/checkpoint-<step>/   Trainer checkpoints (adapter, optimizer, scheduler, RNG, state)
    adapter/                         final adapter + tokenizer (modeling.save_adapter)
    val_predictions.parquet          id, winner_model_a, winner_model_b, winner_tie, label
    test_predictions.parquet         id, winner_model_a, winner_model_b, winner_tie (when a test set is given:
                                     predicted by the trained model in memory, no reload of the base)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler, SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

from pref_core.config import DistillConfig, RunConfig, TrainConfig
from pref_core.distributed import fsdp_training_arguments
from pref_core.inference import PreferenceCollator, predict_probabilities
from pref_core.labels import LABEL_COLUMNS, NUM_CLASSES, swap_label_index, swap_probabilities
from pref_core.metrics import compute_accuracy, compute_log_loss
from pref_core.modeling import build_model, distillation_loss, resolve_model_source, save_adapter
from pref_core.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
VAL_PREDICTIONS_FILE = "val_predictions.parquet"
TEST_PREDICTIONS_FILE = "test_predictions.parquet"
_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class FoldResult:
    """What a trained fold leaves behind (paths, never models: they are handed between processes).

    `metrics`: val_log_loss / val_accuracy of the saved validation predictions (with train.tta_swap,
    of the averaged views; the plain view's loss is val_log_loss_no_tta), train_loss (mean over the
    fold's steps; after a resume, over the steps whose loss was logged: the Trainer does not
    checkpoint the running loss; with distill.teacher_csv, of the distillation objective),
    train_runtime_s (this call only) and global_step.
    """

    adapter_dir: Path
    val_predictions_path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: Optional[str] = None
    test_predictions_path: Optional[Path] = None


# -- out of memory --------------------------------------------------------------------------------------------------


class FoldOutOfMemoryError(RuntimeError):
    """CUDA ran out of memory in a fold; the message is one line (what was running, the batch, the fix)."""


MEMORY_KEYS = ("train.per_device_batch_size", "train.gradient_accumulation_steps", "model.gradient_checkpointing",
               "model.quantization", "prompt.max_length")


def describe_out_of_memory(config: RunConfig, phase: str, batch_shape: Optional[Sequence[int]] = None) -> str:
    """One line for a CUDA out-of-memory error in `phase` (training / validation / test prediction): the
    batch (rows x sequence length) it hit, when known, and the config keys that reduce memory, with their
    current values."""
    if batch_shape is not None:
        rows, length = int(batch_shape[0]), int(batch_shape[-1])
        hit = f"at batch size {rows} (rows), sequence length {length}"
    else:
        hit = (f"at up to batch size {config.train.eval_batch_size} (train.eval_batch_size), sequence length "
               f"{config.prompt.max_length}")
    train, model = config.train, config.model
    return (
        f"CUDA out of memory during {phase} {hit}; reduce memory with train.per_device_batch_size "
        f"(now {train.per_device_batch_size}; raise train.gradient_accumulation_steps, now "
        f"{train.gradient_accumulation_steps}, to keep the effective batch), model.gradient_checkpointing=true "
        f"(now {str(model.gradient_checkpointing).lower()}), model.quantization=4bit (now {model.quantization}), "
        f"a shorter prompt.max_length (now {config.prompt.max_length}) or train.eval_batch_size "
        f"(now {train.eval_batch_size}); a rerun resumes from the last checkpoint"
    )


# -- validation ---------------------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, 3) logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class ValidationRecorder(TrainerCallback):
    """The Trainer's `compute_metrics` that also keeps the latest validation probabilities.

    The final validation pass then doubles as the held-out prediction pass (no second forward over
    the validation rows). `step` is the global step of the kept probabilities.
    """

    def __init__(self) -> None:
        self.probabilities: Optional[np.ndarray] = None  # (n, 3), in the evaluated dataset's order
        self.step: Optional[int] = None
        self._pending: Optional[np.ndarray] = None

    def __call__(self, eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, tuple):  # a model returning extra outputs; logits come first
            logits = logits[0]
        labels = np.asarray(eval_prediction.label_ids)
        probabilities = softmax(np.asarray(logits))
        self._pending = probabilities
        # The Trainer prefixes these with the metric_key_prefix: val_log_loss, val_accuracy.
        return {
            "log_loss": compute_log_loss(labels, probabilities),
            "accuracy": compute_accuracy(labels, probabilities),
        }

    def on_evaluate(self, args, state, control, **kwargs):
        if self._pending is not None:
            self.probabilities, self.step, self._pending = self._pending, state.global_step, None


class LoggingCallback(TrainerCallback):
    """Trainer logs (loss, learning rate, val metrics) to Python logging instead of stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
            logger.info("step %d/%d: %s", state.global_step, state.max_steps, shown)


# -- sampling -------------------------------------------------------------------------------------------------------


SWAP_MODES = ("none", "random", "both")


class SwapViewDataset(TorchDataset):
    """Both a/b orders of every training pair, addressed by key: ``k`` is row k as tokenized, ``n + k`` is
    row k with responses a and b exchanged (``input_ids_swap``, the label mapped by swap_label_index and
    the teacher probabilities by swap_probabilities, so a swapped row says the same thing as the original).

    `EpochSeededSampler` with a swap mode decides which keys an epoch shows. Items hold only what the
    collator reads: input_ids, label, and teacher_probs / has_teacher when the dataset has them.
    """

    def __init__(self, dataset):
        if "input_ids_swap" not in dataset.column_names:
            raise ValueError(
                "train.swap needs an 'input_ids_swap' column in the train dataset (have "
                f"{dataset.column_names}); tokenize the train rows with with_swap=True, or set train.swap=none"
            )
        wanted = ("input_ids", "input_ids_swap", "label", "teacher_probs", "has_teacher")
        # Only the needed columns are decoded per row (the arrow table stays on disk / memory-mapped).
        self.rows = dataset.select_columns([c for c in wanted if c in dataset.column_names])
        self.lengths = dataset_lengths(dataset)  # of the original order; the swapped one differs by truncation only

    @property
    def n_pairs(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        return 2 * self.n_pairs

    def __getitem__(self, key: int) -> dict[str, Any]:
        swapped, index = divmod(int(key), self.n_pairs)
        if not 0 <= swapped <= 1:
            raise IndexError(f"key {key} outside 0..{len(self) - 1}")
        row = self.rows[index]
        item: dict[str, Any] = {
            "input_ids": row["input_ids_swap"] if swapped else row["input_ids"],
            "label": swap_label_index(int(row["label"])) if swapped else int(row["label"]),
        }
        if "teacher_probs" in row:
            probs = row["teacher_probs"]
            item["teacher_probs"] = swap_probabilities(np.asarray(probs)).tolist() if swapped else probs
            item["has_teacher"] = bool(row.get("has_teacher", True))
        return item


class EpochSeededSampler(Sampler[int]):
    """Shuffled order that depends only on (seed, epoch), optionally grouped by length and a/b swapped.

    Trainer's own samplers draw from the global RNG, so a resumed run reproduces the order only if
    every earlier draw is replayed. Seeding per epoch makes the skipped-ahead order of a resumed run
    identical to the uninterrupted one by construction.
    `group_by_length`: mega-batches of similar lengths (transformers' grouping) to cut padding;
    `batch_size`: pairs per length group (one optimizer step's pairs; with swap=both, half its rows).
    `swap` (train.swap), over the n pairs of `lengths`, yielding keys of a `SwapViewDataset`:

    * ``none``: row indices 0..n-1 (a plain dataset).
    * ``random``: the same order as ``none``, each pair shown as key i or n + i by a coin drawn per pair from
      the same (seed, epoch) generator after the order: a fresh choice each epoch, reproducible on resume.
    * ``both``: i, n + i for each pair in that order (2n keys), so a batch of an even number of rows
      holds whole pairs and both orders of a pair fall into the same optimizer step.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True, swap: str = "none"
    ):
        if swap not in SWAP_MODES:
            raise ValueError(f"train.swap: got {swap!r}; use one of {list(SWAP_MODES)}")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.swap = swap
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths) * (2 if self.swap == "both" else 1)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        if self.group_by_length:
            order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        else:
            order = torch.randperm(n, generator=generator).tolist()
        if self.swap == "random":
            swapped = torch.randint(0, 2, (n,), generator=generator).tolist()  # per pair, not per position
            return iter([i + n * swapped[i] for i in order])
        if self.swap == "both":
            return iter([key for i in order for key in (i, i + n)])
        return iter(order)


class PreferenceTrainer(Trainer):
    """Trainer with a resumable train order, a/b swap augmentation, distillation, sequential evaluation and
    ``val_`` metric names.

    `swap`: train.swap; with ``random`` or ``both`` the train dataset must be a `SwapViewDataset` (and with
    ``both`` the per-device batch size counts rows: two per pair, see build_training_arguments).
    `distill`: the distill section when distill.teacher_csv is set, else None (teacher columns are ignored).
    """

    def __init__(self, *args, swap: str = "none", distill: Optional[DistillConfig] = None, **kwargs):
        if swap not in SWAP_MODES:
            raise ValueError(f"train.swap: got {swap!r}; use one of {list(SWAP_MODES)}")
        self.swap = swap
        self.distill = distill
        super().__init__(*args, **kwargs)

    # (rows, sequence length) of the batch in the step that runs now: what an out-of-memory error hit.
    last_batch_shape: Optional[tuple[int, ...]] = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.last_batch_shape = tuple(inputs["input_ids"].shape)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self.last_batch_shape = tuple(inputs["input_ids"].shape)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.swap != "none" and not isinstance(dataset, SwapViewDataset):
            raise ValueError(f"train.swap={self.swap} needs the train rows wrapped in SwapViewDataset "
                             "(fine_tune_fold does this); pass SwapViewDataset(train_ds)")
        # Rows of one optimizer step over all processes (train.num_processes): the same length groups and
        # order as a 1-process run, which accelerate then deals out batch by batch to the processes.
        step_rows = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return EpochSeededSampler(
            dataset.lengths if isinstance(dataset, SwapViewDataset) else dataset_lengths(dataset),
            batch_size=step_rows // 2 if self.swap == "both" else step_rows,  # grouped by pairs
            seed=self.args.seed,
            group_by_length=self.args.train_sampling_strategy == "group_by_length",
            swap=self.swap,
        )

    def num_examples(self, dataloader) -> int:
        # Rows an epoch shows (the sampler's length), not the 2n keys of a SwapViewDataset. The sampler sits
        # under accelerate's BatchSampler, or one level deeper under its BatchSamplerShard (several processes).
        batch_sampler = getattr(dataloader, "batch_sampler", None)
        for holder in (batch_sampler, getattr(batch_sampler, "batch_sampler", None)):
            sampler = getattr(holder, "sampler", None)
            if isinstance(sampler, EpochSeededSampler):
                return len(sampler)
        return super().num_examples(dataloader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's cross-entropy, or with a teacher in the batch while training, modeling.distillation_loss.

        Validation always scores the plain cross-entropy (its rows carry no teacher, and a teacher there
        would not change what is measured). Like the model's loss, this is a per-batch mean: the Trainer
        divides it by the gradient accumulation steps.
        """
        inputs = dict(inputs)  # the caller's batch stays as it was
        teacher_probs = inputs.pop("teacher_probs", None)  # (batch, 3)
        has_teacher = inputs.pop("has_teacher", None)  # (batch,)
        if self.distill is None or teacher_probs is None or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = distillation_loss(
            outputs["logits"], labels, teacher_probs, has_teacher,
            hard_weight=self.distill.hard_weight, kl_weight=self.distill.kl_weight,
            temperature=self.distill.temperature,
        )
        return (loss, {**outputs, "loss": loss}) if return_outputs else loss

    def _get_eval_sampler(self, eval_dataset):
        # Dataset order, so that recorded predictions line up with rows (fine_tune_fold sorts rows by length first).
        return SequentialSampler(eval_dataset)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "val"):
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)


# -- arguments ------------------------------------------------------------------------------------------------------


def resolve_optim(train_config: TrainConfig, quantized: bool = False) -> str:
    """transformers optimizer name for train.optim (auto: 8-bit AdamW on CUDA with bitsandbytes installed,
    else plain AdamW, with a warning when only bitsandbytes is missing)."""
    import importlib.util

    optim = train_config.optim
    if optim == "auto":
        optim = "adamw_torch"
        if torch.cuda.is_available():
            if importlib.util.find_spec("bitsandbytes") is not None:
                optim = "adamw_8bit"
            else:
                logger.warning("train.optim=auto: bitsandbytes is not installed, so no 8-bit AdamW; using adamw_torch "
                               "(optimizer state takes 4x the memory; `pip install 'arena-pref[gpu]'` to fix)")
    if optim == "adamw_8bit":
        # Paged: optimizer state can spill to CPU memory on spikes, the usual QLoRA setting.
        return "paged_adamw_8bit" if quantized else "adamw_bnb_8bit"
    return optim


def resolve_mixed_precision(train_config: TrainConfig) -> str:
    """train.mixed_precision with auto resolved: bf16 on a GPU with native bf16 (compute capability 8.0+),
    fp16 on an older CUDA GPU (the Trainer then scales the loss), no on CPU."""
    from pref_core.modeling import native_bf16

    precision = train_config.mixed_precision
    if precision == "auto":
        precision = ("bf16" if native_bf16() else "fp16") if torch.cuda.is_available() else "no"
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision=fp16 needs a CUDA GPU; use auto or no on CPU")
    return precision


def build_training_arguments(config: RunConfig, checkpoints_dir: Union[str, Path]) -> TrainingArguments:
    """TrainingArguments for one fold from the train section of the run config.

    With train.swap=both, train.per_device_batch_size counts pairs: each device batch holds that many pairs
    in both orders (twice as many rows, so twice the activation memory of swap=none) and an epoch has as many
    optimizer steps as with swap=none. The Trainer itself counts rows (its per-device batch size and
    "Num examples" are doubled), which keeps every batch made of whole pairs.
    """
    train = config.train
    precision = resolve_mixed_precision(train)
    rows_per_pair = 2 if train.swap == "both" else 1
    processes = check_world_size(train)
    distributed = {}
    if processes > 1:
        # Every LoRA weight takes part in every step: no search for unused parameters after each backward.
        distributed = {"ddp_find_unused_parameters": False, "ddp_backend": None if torch.cuda.is_available() else "gloo"}
        distributed.update(fsdp_training_arguments(config))  # train.distributed=fsdp (pref_core/distributed.py)
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=train.per_device_batch_size * rows_per_pair,
        per_device_eval_batch_size=train.eval_batch_size,
        # Each process accumulates its share, so a step still sees per_device_batch_size x accumulation rows.
        gradient_accumulation_steps=train.gradient_accumulation_steps // processes,
        **distributed,
        num_train_epochs=train.num_epochs,
        max_steps=train.max_steps if train.max_steps is not None else -1,  # -1: transformers' 'by epochs'
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=resolve_optim(train, quantized=config.model.quantization != "none"),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        logging_strategy="steps",
        logging_steps=train.logging_steps,
        eval_strategy="steps" if train.eval_steps > 0 else "epoch",
        eval_steps=train.eval_steps if train.eval_steps > 0 else None,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        seed=train.seed,
        dataloader_num_workers=train.dataloader_num_workers,
        # Rows keep id/length/label columns; the collator picks what the model needs.
        remove_unused_columns=False,
        label_names=["labels"],
        # MLflow tracking is the caller's business, through callbacks; others (tensorboard, wandb) by choice.
        report_to=list(config.train.report_to),
        disable_tqdm=True,  # the console bar is pref_core.progress.FoldProgressCallback
        include_num_input_tokens_seen="non_padding",  # tokens per second, without padding

    )


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


# -- data checks ----------------------------------------------------------------------------------------------------


def dataset_lengths(dataset) -> list[int]:
    """Token counts of the rows (the ``length`` column when the tokenizer wrote one)."""
    if "length" in dataset.column_names:
        return list(dataset["length"])
    return [len(ids) for ids in dataset["input_ids"]]


def check_fold_dataset(dataset, name: str) -> None:
    """Fail early, naming every problem, when a tokenized split cannot be trained or scored."""
    problems = []
    missing = [c for c in ("id", "input_ids", "label") if c not in dataset.column_names]
    if missing:
        problems.append(
            f"missing columns {missing} (have {dataset.column_names}); tokenize with pref_core.tokenization"
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


def check_train_inputs(config: RunConfig, train_ds) -> None:
    """Fail early when the train dataset lacks the columns train.swap or distill.teacher_csv need (all problems)."""
    problems = []
    if config.train.swap != "none" and "input_ids_swap" not in train_ds.column_names:
        problems.append(
            f"train.swap={config.train.swap} needs an 'input_ids_swap' column (have {train_ds.column_names}); "
            "tokenize the train rows with the swapped view (tokenize_frame(..., with_swap=True)), "
            "or set train.swap=none"
        )
    if config.distill.enabled and "teacher_probs" not in train_ds.column_names:
        problems.append(
            f"distill.teacher_csv={str(config.distill.teacher_csv)!r} is set but the train dataset has no "
            "'teacher_probs' column; attach it with pref_core.data.attach_teacher_probs(train_ds, "
            "read_teacher_probs(distill.teacher_csv)), or set distill.teacher_csv=null"
        )
    if problems:
        raise ValueError("train dataset: " + "; ".join(problems))


def count_teacher_rows(train_ds) -> int:
    """Rows of a dataset with a teacher (all of them when there is teacher_probs but no has_teacher column)."""
    if "has_teacher" in train_ds.column_names:
        return int(np.count_nonzero(np.asarray(train_ds["has_teacher"], dtype=bool)))
    return len(train_ds) if "teacher_probs" in train_ds.column_names else 0


def check_teacher_coverage(config: RunConfig, train_ds) -> int:
    """Log how many train rows have a teacher and return the count; fail when none has (the ids cannot match)."""
    with_teacher = count_teacher_rows(train_ds)
    distill = config.distill
    logger.info(
        "distillation: %d of %d train rows have a teacher (the others train on their hard label only); "
        "hard_weight=%g kl_weight=%g temperature=%g",
        with_teacher, len(train_ds), distill.hard_weight, distill.kl_weight, distill.temperature,
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
            "above 0 to train on their labels", len(train_ds) - with_teacher,
        )
    return with_teacher


def find_resumable_checkpoint(checkpoints_dir: Union[str, Path]) -> Optional[Path]:
    """Latest complete Trainer checkpoint in `checkpoints_dir` (a folder killed mid-save is skipped)."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None
    found = []
    for path in checkpoints_dir.iterdir():
        match = _CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        # trainer_state.json is written after the weights and the optimizer state.
        if (path / "trainer_state.json").is_file() and (path / "adapter_model.safetensors").is_file():
            return path
        logger.warning("skipping incomplete checkpoint %s", path)
    return None


def logged_train_loss(log_history: Sequence[dict[str, Any]]) -> float:
    """Mean training loss over the logged steps of the whole run (the Trainer logs per-interval means)."""
    total, steps, previous = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            span = int(entry["step"]) - previous
            total, steps, previous = total + span * float(entry["loss"]), steps + span, int(entry["step"])
    return total / steps if steps else math.nan


def tokens_per_second(trainer, runtime_s: float) -> float:
    """Non-padding training tokens per second of this train() call (a resumed call counts only its own steps)."""
    seen = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return float(seen / runtime_s) if runtime_s > 0 else math.nan


def resolve_padding(tokenizer) -> tuple[int, Optional[int]]:
    """(pad_token_id, pad_to_multiple_of) of the collators: any pad id works, padded positions are masked."""
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Multiples of 8 suit GPU tensor cores; on CPU they would only add padding.
    return pad_token_id, 8 if torch.cuda.is_available() else None


def load_training_tokenizer(config: RunConfig, name_or_path: Optional[Union[str, Path]] = None):
    """The tokenizer of the base model this config trains (`name_or_path` overrides model.name_or_path)."""
    return load_tokenizer(resolve_model_source(config.model, name_or_path), config.model.revision)


# -- training -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_cpu_threads(count: Optional[int]):
    """Run the block with `count` torch CPU threads (train.cpu_threads), then restore the previous count."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fine_tune_fold(
    config: RunConfig,
    train_ds,
    val_ds,
    output_dir: Union[str, Path],
    callbacks: Sequence[TrainerCallback] = (),
    name_or_path: Optional[Union[str, Path]] = None,
    test_ds=None,
) -> FoldResult:
    """Train LoRA on `train_ds`, score `val_ds`, save adapter and held-out predictions under `output_dir`.

    `train_ds` / `val_ds`: tokenized datasets (id, input_ids, length, label). `name_or_path` overrides
    model.name_or_path (the built folder of a tiny model). `test_ds` (tokenized, no labels needed): predicted
    with the trained model still in memory (with train.tta_swap, both orders), written to
    ``test_predictions.parquet``. Resumes from the latest checkpoint in ``output_dir/checkpoints`` when
    there is one.
    """
    output_dir = Path(output_dir)
    progress: dict[str, Any] = {"phase": "model loading", "trainer": None}
    with torch_cpu_threads(config.train.cpu_threads):
        try:
            return _train_fold(config, train_ds, val_ds, output_dir, callbacks, name_or_path, test_ds, progress)
        except torch.cuda.OutOfMemoryError:
            trainer = progress["trainer"]
            shape = trainer.last_batch_shape if trainer is not None and progress["phase"] != "test prediction" else None
            message = describe_out_of_memory(config, progress["phase"], shape)
            # The traceback goes to a file, the console gets the one line.
            output_dir.mkdir(parents=True, exist_ok=True)
            log = output_dir / "error.log"
            log.write_text(message + "\n\n" + traceback.format_exc(), encoding="utf-8")
            logger.error("%s (traceback in %s)", message, log)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise FoldOutOfMemoryError(message) from None


def build_trainer(
    config: RunConfig,
    model,
    tokenizer,
    train_ds,
    eval_ds,
    checkpoints_dir: Union[str, Path],
    compute_metrics=None,
    callbacks: Sequence[TrainerCallback] = (),
) -> PreferenceTrainer:
    """The fold's Trainer: train.swap views of `train_ds`, the distillation loss when distill.teacher_csv is
    set, the resumable train order and sequential evaluation of `eval_ds` (in its given order)."""
    check_train_inputs(config, train_ds)
    pad_token_id, pad_to_multiple_of = resolve_padding(tokenizer)
    distill = config.distill if config.distill.enabled else None
    if distill is None and "teacher_probs" in train_ds.column_names:
        logger.info("the train dataset has teacher_probs but distill.teacher_csv is not set: training on hard labels")
    trainer = PreferenceTrainer(
        model=model,
        args=build_training_arguments(config, checkpoints_dir),
        data_collator=PreferenceCollator(pad_token_id, pad_to_multiple_of),
        train_dataset=SwapViewDataset(train_ds) if config.train.swap != "none" else train_ds,
        eval_dataset=eval_ds,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
        swap=config.train.swap,
        distill=distill,
    )
    trainer.remove_callback(PrinterCallback)  # LoggingCallback reports through logging instead of print
    return trainer


def _train_fold(config, train_ds, val_ds, output_dir: Path, callbacks, name_or_path, test_ds=None,
                progress: Optional[dict] = None) -> FoldResult:
    progress = {} if progress is None else progress  # phase and trainer, read by fine_tune_fold on out-of-memory
    check_fold_dataset(train_ds, "train")
    check_fold_dataset(val_ds, "validation")
    check_train_inputs(config, train_ds)  # before the model loads: a missing column fails in seconds
    if config.distill.enabled:
        check_teacher_coverage(config, train_ds)
    checkpoints_dir = output_dir / CHECKPOINTS_DIR
    resume_from = find_resumable_checkpoint(checkpoints_dir)
    if resume_from is not None:
        logger.info("resuming from %s", resume_from)

    tokenizer = load_training_tokenizer(config, name_or_path)
    model = build_model(config, tokenizer, name_or_path)
    pad_token_id, pad_to_multiple_of = resolve_padding(tokenizer)

    # Longest first: little padding per eval batch, and an out-of-memory error shows up at once.
    val_order = np.argsort(-np.asarray(dataset_lengths(val_ds)), kind="stable")
    val_sorted = val_ds.select(val_order)
    recorder = ValidationRecorder()
    trainer = build_trainer(
        config, model, tokenizer, train_ds, val_sorted, checkpoints_dir,
        compute_metrics=recorder, callbacks=[recorder, LoggingCallback(), *callbacks],
    )
    progress.update(trainer=trainer, phase="training")
    logger.info(
        "training on %d rows (train.swap=%s), validating on %d rows, %s", len(train_ds), config.train.swap,
        len(val_ds),
        f"{config.train.max_steps} steps" if config.train.max_steps is not None else f"{config.train.num_epochs} epochs",
    )
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    progress["phase"] = "validation"
    if recorder.step != trainer.state.global_step:  # no evaluation after the last optimizer step yet
        trainer.evaluate()
    probabilities = np.empty_like(recorder.probabilities)
    probabilities[val_order] = recorder.probabilities  # back to val_ds order
    labels = np.asarray(val_ds["label"])
    train_loss = train_output.training_loss
    if world_size() > 1:  # each process's training_loss is the mean of its own rows: average the processes
        train_loss = float(trainer.accelerator.reduce(
            torch.tensor(train_loss, dtype=torch.float32, device=trainer.args.device), reduction="mean"))
    if resume_from is not None:  # a resumed call only saw its own steps, so it reads the logged history
        train_loss = logged_train_loss(trainer.state.log_history)
    metrics: dict[str, Any] = {
        "val_log_loss": compute_log_loss(labels, probabilities),
        "val_accuracy": compute_accuracy(labels, probabilities),
        "train_loss": float(train_loss),
        "train_runtime_s": float(train_output.metrics.get("train_runtime", math.nan)),
        "train_samples_per_second": float(train_output.metrics.get("train_samples_per_second", math.nan)),
        "train_tokens_per_second": tokens_per_second(trainer, float(train_output.metrics.get("train_runtime", 0.0))),
        "global_step": int(trainer.state.global_step),
    }
    if not is_main_process():  # the other processes of a distributed fold: rank 0 writes and predicts
        return FoldResult(adapter_dir=output_dir / ADAPTER_DIR, val_predictions_path=output_dir / VAL_PREDICTIONS_FILE,
                          metrics=metrics, resumed_from=str(resume_from) if resume_from else None)
    if config.train.tta_swap:
        probabilities = predict_probabilities(
            trainer.model, val_ds, batch_size=config.train.eval_batch_size, tta_swap=True,
            pad_token_id=pad_token_id, pad_to_multiple_of=pad_to_multiple_of,
        )
        tta = {
            "val_log_loss_tta": compute_log_loss(labels, probabilities),
            "val_accuracy_tta": compute_accuracy(labels, probabilities),
        }
        trainer.log(tta)  # callbacks see the TTA numbers too
        metrics.update(
            val_log_loss_no_tta=metrics["val_log_loss"],
            val_log_loss=tta["val_log_loss_tta"],
            val_accuracy=tta["val_accuracy_tta"],
        )

    output_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = output_dir / VAL_PREDICTIONS_FILE
    frame = pd.DataFrame(probabilities, columns=list(LABEL_COLUMNS))
    frame.insert(0, "id", list(val_ds["id"]))
    frame["label"] = labels
    frame.to_parquet(predictions_path, index=False)
    adapter_dir = save_adapter(trainer.model, output_dir / ADAPTER_DIR, tokenizer)
    test_path = None
    if test_ds is not None:
        progress["phase"] = "test prediction"
        test_probabilities = predict_probabilities(
            trainer.model, test_ds, batch_size=config.train.eval_batch_size, tta_swap=config.train.tta_swap,
            pad_token_id=pad_token_id, pad_to_multiple_of=pad_to_multiple_of, progress=True,
        )
        test_frame = pd.DataFrame(test_probabilities, columns=list(LABEL_COLUMNS))
        test_frame.insert(0, "id", list(test_ds["id"]))
        test_path = output_dir / TEST_PREDICTIONS_FILE
        test_frame.to_parquet(test_path, index=False)
    logger.info(
        "fold done: val_log_loss=%.4f val_accuracy=%.3f train_loss=%.4f in %.1fs",
        metrics["val_log_loss"], metrics["val_accuracy"], metrics["train_loss"], metrics["train_runtime_s"],
    )
    return FoldResult(
        adapter_dir=adapter_dir,
        val_predictions_path=predictions_path,
        metrics=metrics,
        resumed_from=str(resume_from) if resume_from else None,
        test_predictions_path=test_path,
    )
