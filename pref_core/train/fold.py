"""Train one cross-validation fold: the driver, as named phases.

`fine_tune_fold` runs them in order (litgpt's finetune/lora.py reads the same way):

1. check (checks.check_fold_inputs): the splits and the columns train.swap / distill need, before the model loads;
2. setup (`setup_fold`): tokenizer, LoRA model (pref_core.model.preference.build_model) and the Trainer
   (trainer.build_trainer);
3. train (`train_with_resume`): from the latest checkpoint in ``checkpoints/`` when there is one, so a killed
   fold continues where it stopped, bit for bit;
4. validate (`validate_fold`, `validate_with_tta`): metrics ``val_log_loss`` / ``val_accuracy``, seen by the
   caller's callbacks in ``on_evaluate`` and ``on_log``;
5. save (`save_fold`): held-out predictions and the final adapter;
6. predict (`predict_rows`): the test rows and, with train.predict_train_rows, the fold's own training rows (a
   student's per-fold soft labels), with the trained model still in memory: the base is never loaded again.

What a step sees (train.swap, distill) is decided by sampling, losses and trainer.PreferenceTrainer; validation
and inference never see it.

The folder it writes (checkpoints, adapter, predictions) and what it returns: pref_core.train.result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from pref_core.config.schema import ModelConfig, RunConfig, TrainConfig
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.errors import UserError
from pref_core.evaluate.metrics import compute_accuracy, compute_log_loss
from pref_core.model.backbone import resolve_model_source
from pref_core.model.preference import build_model, save_adapter
from pref_core.predict.inference import predict_probabilities
from pref_core.text.tokenization import load_tokenizer
from pref_core.train import disk_space
from pref_core.train.callbacks import LoggingCallback, ValidationRecorder
from pref_core.train.checks import check_fold_inputs, is_main_process, world_size
from pref_core.train.result import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    TEST_PREDICTIONS_FILE,
    TRAIN_PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    FoldResult,
)
from pref_core.train.sampling import dataset_lengths
from pref_core.train.trainer import PreferenceTrainer, build_trainer, resolve_padding

logger = logging.getLogger(__name__)

_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


# -- out of memory --------------------------------------------------------------------------------------------------


class FoldOutOfMemoryError(UserError, RuntimeError):
    """CUDA ran out of memory in a fold; the message is one line (what was running, the batch, the fix)."""


MEMORY_KEYS = (
    "train.per_device_batch_size",
    "train.gradient_accumulation_steps",
    "model.gradient_checkpointing",
    "model.quantization",
    "prompt.max_length",
)


def describe_out_of_memory(config: RunConfig, phase: str, batch_shape: Optional[Sequence[int]] = None) -> str:
    """One line for a CUDA out-of-memory error in `phase` (training / validation / test prediction): the
    batch (rows x sequence length) it hit, when known, and the config keys that reduce memory, with their
    current values."""
    if batch_shape is not None:
        rows, length = int(batch_shape[0]), int(batch_shape[-1])
        hit = f"at batch size {rows} (rows), sequence length {length}"
    else:
        hit = (
            f"at up to batch size {config.train.eval_batch_size} (train.eval_batch_size), sequence length "
            f"{config.prompt.max_length}"
        )
    train, model = config.train, config.model
    return (
        f"CUDA out of memory during {phase} {hit}; reduce memory with train.per_device_batch_size "
        f"(now {train.per_device_batch_size}; raise train.gradient_accumulation_steps, now "
        f"{train.gradient_accumulation_steps}, to keep the effective batch), model.gradient_checkpointing=true "
        f"(now {str(model.gradient_checkpointing).lower()}), model.quantization=4bit (now {model.quantization}), "
        f"a shorter prompt.max_length (now {config.prompt.max_length}) or train.eval_batch_size "
        f"(now {train.eval_batch_size}); a rerun resumes from the last checkpoint"
    )


# -- checkpoints ---------------------------------------------------------------------------------------------------


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


def load_training_tokenizer(model: ModelConfig, name_or_path: Optional[Union[str, Path]] = None):
    """The tokenizer of the base model the model section names (`name_or_path` overrides model.name_or_path)."""
    return load_tokenizer(resolve_model_source(model, name_or_path), model.revision)


# -- driver --------------------------------------------------------------------------------------------------------


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
            shape = (
                trainer.last_batch_shape
                if trainer is not None and not progress["phase"].endswith("prediction")
                else None
            )
            message = describe_out_of_memory(config, progress["phase"], shape)
            # The traceback goes to a file, the console gets the one line.
            output_dir.mkdir(parents=True, exist_ok=True)
            log = output_dir / "error.log"
            log.write_text(message + "\n\n" + traceback.format_exc(), encoding="utf-8")
            logger.error("%s (traceback in %s)", message, log)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise FoldOutOfMemoryError(message) from None
        except (OSError, RuntimeError) as err:
            checkpoints = output_dir / CHECKPOINTS_DIR
            trainer = progress["trainer"]
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) if trainer else 0
            needed = disk_space.checkpoint_bytes(find_resumable_checkpoint(checkpoints), trainable)
            if not disk_space.is_disk_full(err, output_dir, needed):
                raise
            writing = "a checkpoint" if progress["phase"] == "training" else f"the fold's outputs ({progress['phase']})"
            folder = checkpoints if progress["phase"] == "training" else output_dir
            message = disk_space.describe_disk_full(folder, writing, needed)
            logger.error("%s", message, exc_info=True)  # the traceback to the log: a full disk takes no error.log
            raise disk_space.FoldDiskFullError(message) from None


def _train_fold(
    config, train_ds, val_ds, output_dir: Path, callbacks, name_or_path, test_ds=None, progress: Optional[dict] = None
) -> FoldResult:
    """The phases of `fine_tune_fold`; `progress` (phase, trainer) tells it what ran out of memory."""
    progress = {} if progress is None else progress
    check_fold_inputs(config.train, config.distill, train_ds, val_ds)  # before the model loads: fails in seconds
    resume_from = find_resumable_checkpoint(output_dir / CHECKPOINTS_DIR)
    if resume_from is not None:
        logger.info("resuming from %s", resume_from)
    fold = setup_fold(config, train_ds, val_ds, output_dir / CHECKPOINTS_DIR, callbacks, name_or_path)
    progress.update(trainer=fold.trainer, phase="training")
    train_output = train_with_resume(fold, config.train, train_ds, val_ds, resume_from)
    progress["phase"] = "validation"
    probabilities, metrics = validate_fold(fold, val_ds, train_output, resume_from)
    resumed_from = str(resume_from) if resume_from else None
    if not is_main_process():  # the other processes of a distributed fold: rank 0 writes and predicts
        return FoldResult(
            fold_dir=output_dir,
            adapter_dir=output_dir / ADAPTER_DIR,
            val_predictions=output_dir / VAL_PREDICTIONS_FILE,
            metrics=metrics,
            resumed_from=resumed_from,
        )
    if config.train.tta_swap:
        probabilities, metrics = validate_with_tta(fold, config.train, val_ds, metrics)
    predictions_path, adapter_dir = save_fold(fold, output_dir, val_ds, probabilities)
    test_path = None
    if test_ds is not None:
        progress["phase"] = "test prediction"
        test_path = predict_rows(fold, config.train, test_ds, output_dir / TEST_PREDICTIONS_FILE)
    train_path = None
    if config.train.predict_train_rows:
        progress["phase"] = "train-row prediction"
        train_path = predict_rows(fold, config.train, train_ds, output_dir / TRAIN_PREDICTIONS_FILE)
    logger.info(
        "fold done: val_log_loss=%.4f val_accuracy=%.3f train_loss=%.4f in %.1fs",
        metrics["val_log_loss"],
        metrics["val_accuracy"],
        metrics["train_loss"],
        metrics["train_runtime_s"],
    )
    return FoldResult(
        fold_dir=output_dir,
        adapter_dir=adapter_dir,
        val_predictions=predictions_path,
        metrics=metrics,
        test_predictions=test_path,
        train_predictions=train_path,
        resumed_from=resumed_from,
    )


@dataclass
class FoldSetup:
    """What the phases after setup share."""

    trainer: PreferenceTrainer
    tokenizer: Any
    recorder: ValidationRecorder  # holds the probabilities of the latest validation pass
    val_order: np.ndarray  # (n_val,): the val_ds row of each row of the trainer's eval dataset (longest first)


def setup_fold(
    config: RunConfig,
    train_ds,
    val_ds,
    checkpoints_dir: Path,
    callbacks: Sequence[TrainerCallback],
    name_or_path: Optional[Union[str, Path]],
) -> FoldSetup:
    """Tokenizer, LoRA model and Trainer of the fold; the validation rows are evaluated longest first."""
    tokenizer = load_training_tokenizer(config.model, name_or_path)
    model = build_model(config.model, config.lora, tokenizer, name_or_path=name_or_path, seed=config.train.seed)
    # Longest first: little padding per eval batch, and an out-of-memory error shows up at once.
    val_order = np.argsort(-np.asarray(dataset_lengths(val_ds)), kind="stable")
    recorder = ValidationRecorder()
    trainer = build_trainer(
        config,
        model,
        tokenizer,
        train_ds,
        val_ds.select(val_order),
        checkpoints_dir,
        compute_metrics=recorder,
        callbacks=[recorder, LoggingCallback(), *callbacks],
    )
    return FoldSetup(trainer=trainer, tokenizer=tokenizer, recorder=recorder, val_order=val_order)


def train_with_resume(fold: FoldSetup, train: TrainConfig, train_ds, val_ds, resume_from: Optional[Path]):
    """Run the Trainer (from `resume_from` when given) and return its TrainOutput."""
    logger.info(
        "training on %d rows (train.swap=%s), validating on %d rows, %s",
        len(train_ds),
        train.swap,
        len(val_ds),
        f"{train.max_steps} steps" if train.max_steps is not None else f"{train.num_epochs} epochs",
    )
    return fold.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)


def validate_fold(fold: FoldSetup, val_ds, train_output, resume_from: Optional[Path]) -> tuple[np.ndarray, dict]:
    """Held-out probabilities (n_val, 3) in val_ds order, from the last validation pass, and the fold's metrics."""
    trainer, recorder = fold.trainer, fold.recorder
    if recorder.step != trainer.state.global_step:  # no evaluation after the last optimizer step yet
        trainer.evaluate()
    probabilities = np.empty_like(recorder.probabilities)
    probabilities[fold.val_order] = recorder.probabilities  # back to val_ds order
    labels = np.asarray(val_ds["label"])
    metrics: dict[str, Any] = {
        "val_log_loss": compute_log_loss(labels, probabilities),
        "val_accuracy": compute_accuracy(labels, probabilities),
        **training_metrics(trainer, train_output, resume_from),
    }
    return probabilities, metrics


def training_metrics(trainer: PreferenceTrainer, train_output, resume_from: Optional[Path]) -> dict[str, Any]:
    """train_loss (see FoldResult), runtime, throughput and global step of this train() call."""
    train_loss = train_output.training_loss
    if world_size() > 1:  # each process's training_loss is the mean of its own rows: average the processes
        train_loss = float(
            trainer.accelerator.reduce(
                torch.tensor(train_loss, dtype=torch.float32, device=trainer.args.device), reduction="mean"
            )
        )
    if resume_from is not None:  # a resumed call only saw its own steps, so it reads the logged history
        train_loss = logged_train_loss(trainer.state.log_history)
    timing = train_output.metrics
    return {
        "train_loss": float(train_loss),
        "train_runtime_s": float(timing.get("train_runtime", math.nan)),
        "train_samples_per_second": float(timing.get("train_samples_per_second", math.nan)),
        "train_tokens_per_second": tokens_per_second(trainer, float(timing.get("train_runtime", 0.0))),
        "global_step": int(trainer.state.global_step),
    }


def validate_with_tta(fold: FoldSetup, train: TrainConfig, val_ds, metrics: dict) -> tuple[np.ndarray, dict]:
    """train.tta_swap: the held-out rows predicted in both a/b orders and averaged; val_log_loss becomes theirs
    (the plain view's stays as val_log_loss_no_tta)."""
    pad_token_id, pad_to_multiple_of = resolve_padding(fold.tokenizer)
    probabilities = predict_probabilities(
        fold.trainer.model,
        val_ds,
        batch_size=train.eval_batch_size,
        max_batch_tokens=train.eval_max_batch_tokens,
        tta_swap=True,
        pad_token_id=pad_token_id,
        pad_to_multiple_of=pad_to_multiple_of,
    )
    labels = np.asarray(val_ds["label"])
    tta = {
        "val_log_loss_tta": compute_log_loss(labels, probabilities),
        "val_accuracy_tta": compute_accuracy(labels, probabilities),
    }
    fold.trainer.log(tta)  # callbacks see the TTA numbers too
    return probabilities, {
        **metrics,
        "val_log_loss_no_tta": metrics["val_log_loss"],
        "val_log_loss": tta["val_log_loss_tta"],
        "val_accuracy": tta["val_accuracy_tta"],
    }


def save_fold(fold: FoldSetup, output_dir: Path, val_ds, probabilities: np.ndarray) -> tuple[Path, Path]:
    """Write the held-out predictions (with their labels) and the final adapter; returns both paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = write_predictions(
        output_dir / VAL_PREDICTIONS_FILE, val_ds["id"], probabilities, labels=np.asarray(val_ds["label"])
    )
    adapter_dir = save_adapter(fold.trainer.model, output_dir / ADAPTER_DIR, fold.tokenizer)
    return predictions_path, adapter_dir


def predict_rows(fold: FoldSetup, train: TrainConfig, dataset, path: Path) -> Path:
    """Predict `dataset` with the trained model in memory (train.tta_swap: both orders) and write it to `path`."""
    pad_token_id, pad_to_multiple_of = resolve_padding(fold.tokenizer)
    probabilities = predict_probabilities(
        fold.trainer.model,
        dataset,
        batch_size=train.eval_batch_size,
        max_batch_tokens=train.eval_max_batch_tokens,
        tta_swap=train.tta_swap,
        pad_token_id=pad_token_id,
        pad_to_multiple_of=pad_to_multiple_of,
        progress=True,
    )
    return write_predictions(path, dataset["id"], probabilities)


def write_predictions(path: Path, ids, probabilities: np.ndarray, labels: Optional[np.ndarray] = None) -> Path:
    """Parquet of id, the LABEL_COLUMNS probabilities (n, 3) and, for held-out rows, the label."""
    frame = pd.DataFrame(probabilities, columns=list(LABEL_COLUMNS))
    frame.insert(0, "id", list(ids))
    if labels is not None:
        frame["label"] = labels
    frame.to_parquet(path, index=False)
    return path
