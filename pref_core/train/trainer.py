"""The fold's Trainer and its arguments.

`PreferenceTrainer` adds to the transformers Trainer what a fold needs: the resumable train order of
sampling.EpochSeededSampler (with train.swap's views of sampling.SwapViewDataset), the distillation loss
(losses.distillation_loss) when distill.teacher_csv is set, sequential evaluation and ``val_`` metric names.
`build_training_arguments` maps the train section onto TrainingArguments; `build_trainer` puts them together.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from pref_core.config.schema import DistillConfig, ModelConfig, RunConfig, TrainConfig
from pref_core.model.backbone import native_bf16
from pref_core.model.losses import distillation_loss
from pref_core.predict.inference import PreferenceCollator
from pref_core.train.checks import check_train_inputs, check_world_size
from pref_core.train.distributed import fsdp_training_arguments
from pref_core.train.sampling import EpochSeededSampler, SwapViewDataset, check_swap_mode, dataset_lengths

logger = logging.getLogger(__name__)


class PreferenceTrainer(Trainer):
    """Trainer with a resumable train order, a/b swap augmentation, distillation, sequential evaluation and
    ``val_`` metric names.

    `swap`: train.swap; with ``random`` or ``both`` the train dataset must be a `SwapViewDataset` (and with
    ``both`` the per-device batch size counts rows: two per pair, see build_training_arguments).
    `distill`: the distill section when distill.teacher_csv is set, else None (teacher columns are ignored).
    """

    def __init__(
        self,
        *args,
        swap: str = "none",
        distill: Optional[DistillConfig] = None,
        eval_max_batch_tokens: Optional[int] = None,
        **kwargs,
    ):
        check_swap_mode(swap)
        self.swap = swap
        self.distill = distill
        self.eval_max_batch_tokens = eval_max_batch_tokens
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
            raise ValueError(
                f"train.swap={self.swap} needs the train rows wrapped in SwapViewDataset "
                "(fine_tune_fold does this); pass SwapViewDataset(train_ds)"
            )
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
        """The model's cross-entropy, or with a teacher in the batch while training, losses.distillation_loss.

        Validation always scores the plain cross-entropy (its rows carry no teacher, and a teacher there
        would not change what is measured). Like the model's loss, this is a per-batch mean: the Trainer
        divides it by the gradient accumulation steps.
        """
        inputs = dict(inputs)  # the caller's batch stays as it was
        teacher_probs = inputs.pop("teacher_probs", None)  # (batch, 3)
        has_teacher = inputs.pop("has_teacher", None)  # (batch,)
        hard_mask = inputs.pop("hard_mask", None)  # (batch,) False on pseudo-labelled rows
        row_weight = inputs.pop("row_weight", None)  # (batch,)
        if self.distill is None or teacher_probs is None or not model.training or "labels" not in inputs:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = distillation_loss(
            outputs["logits"],
            labels,
            teacher_probs,
            has_teacher,
            hard_weight=self.distill.hard_weight,
            kl_weight=self.distill.kl_weight,
            temperature=self.distill.temperature,
            hard_mask=hard_mask,
            row_weight=row_weight,
        )
        return (loss, {**outputs, "loss": loss}) if return_outputs else loss

    def get_eval_dataloader(self, eval_dataset=None):
        """With train.eval_max_batch_tokens (one process): batches of at most that many padded tokens and
        train.eval_batch_size rows, in dataset order (fine_tune_fold sorts the rows longest first, so each batch is a
        run of consecutive rows and the first is the largest)."""
        if self.eval_max_batch_tokens is None or self.args.world_size > 1:
            return super().get_eval_dataloader(eval_dataset)
        from torch.utils.data import DataLoader

        from pref_core.predict.batching import plan_batches

        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        lengths = dataset_lengths(dataset)
        plan = plan_batches(
            lengths,
            self.args.eval_batch_size,
            self.eval_max_batch_tokens,
            getattr(self.data_collator, "pad_to_multiple_of", None),
        )
        batches = sorted((b.tolist() for b in plan.batches), key=lambda rows: rows[0])
        if [row for rows in batches for row in rows] != list(range(len(lengths))):
            raise ValueError("token-budget evaluation needs the eval rows sorted longest first (fine_tune_fold does)")
        # A plain DataLoader: the Trainer moves each batch to the device itself, and accelerate's remainder
        # bookkeeping (which assumes equal batch sizes) stays out of the way of gathering the predictions.
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def _get_eval_sampler(self, eval_dataset):
        # Dataset order, so that recorded predictions line up with rows (fine_tune_fold sorts rows by length first).
        return SequentialSampler(eval_dataset)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "val"):
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)


# -- arguments -------------------------------------------------------------------------------------------------------


def resolve_optim(train_config: TrainConfig, quantized: bool = False) -> str:
    """transformers optimizer name for train.optim (auto: 8-bit AdamW on CUDA with bitsandbytes installed,
    else plain AdamW, with a warning when only bitsandbytes is missing)."""
    optim = train_config.optim
    if optim == "auto":
        optim = "adamw_torch"
        if torch.cuda.is_available():
            if importlib.util.find_spec("bitsandbytes") is not None:
                optim = "adamw_8bit"
            else:
                logger.warning(
                    "train.optim=auto: bitsandbytes is not installed, so no 8-bit AdamW; using adamw_torch "
                    "(optimizer state takes 4x the memory; `pip install 'arena-pref[gpu]'` to fix)"
                )
    if optim == "adamw_8bit":
        # Paged: optimizer state can spill to CPU memory on spikes, the usual QLoRA setting.
        return "paged_adamw_8bit" if quantized else "adamw_bnb_8bit"
    return optim


def resolve_mixed_precision(train_config: TrainConfig) -> str:
    """train.mixed_precision with auto resolved: bf16 on a GPU with native bf16 (compute capability 8.0+),
    fp16 on an older CUDA GPU (the Trainer then scales the loss), no on CPU."""
    precision = train_config.mixed_precision
    if precision == "auto":
        precision = ("bf16" if native_bf16() else "fp16") if torch.cuda.is_available() else "no"
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision=fp16 needs a CUDA GPU; use auto or no on CPU")
    return precision


def distributed_arguments(train: TrainConfig, model: ModelConfig, processes: int) -> dict:
    """TrainingArguments of a fold trained by `processes` processes together (none for one)."""
    if processes == 1:
        return {}
    # Every LoRA weight takes part in every step: no search for unused parameters after each backward.
    arguments = {"ddp_find_unused_parameters": False, "ddp_backend": None if torch.cuda.is_available() else "gloo"}
    arguments.update(fsdp_training_arguments(train, model))  # train.distributed=fsdp (pref_core/train/distributed.py)
    return arguments


def schedule_arguments(train: TrainConfig) -> dict:
    """When a fold logs, evaluates and checkpoints (TrainingArguments keys)."""
    return {
        "logging_strategy": "steps",
        "logging_steps": train.logging_steps,
        "eval_strategy": "steps" if train.eval_steps > 0 else "epoch",
        "eval_steps": train.eval_steps if train.eval_steps > 0 else None,
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        "save_total_limit": train.save_total_limit,
    }


def build_training_arguments(
    train: TrainConfig, model: ModelConfig, checkpoints_dir: Union[str, Path]
) -> TrainingArguments:
    """TrainingArguments for one fold from the train section (and model.quantization, model.gradient_checkpointing).

    With train.swap=both, train.per_device_batch_size counts pairs: each device batch holds that many pairs
    in both orders (twice as many rows, so twice the activation memory of swap=none) and an epoch has as many
    optimizer steps as with swap=none. The Trainer itself counts rows (its per-device batch size and
    "Num examples" are doubled), which keeps every batch made of whole pairs.
    """
    precision = resolve_mixed_precision(train)
    rows_per_pair = 2 if train.swap == "both" else 1
    processes = check_world_size(train)
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=train.per_device_batch_size * rows_per_pair,
        per_device_eval_batch_size=train.eval_batch_size,
        # Each process accumulates its share, so a step still sees per_device_batch_size x accumulation rows.
        gradient_accumulation_steps=train.gradient_accumulation_steps // processes,
        **distributed_arguments(train, model, processes),
        num_train_epochs=train.num_epochs,
        max_steps=train.max_steps if train.max_steps is not None else -1,  # -1: transformers' "by epochs"
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=resolve_optim(train, quantized=model.quantization != "none"),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        **schedule_arguments(train),
        seed=train.seed,
        dataloader_num_workers=train.dataloader_num_workers,
        # Rows keep id/length/label columns; the collator picks what the model needs.
        remove_unused_columns=False,
        label_names=["labels"],
        # MLflow tracking is the caller's business, through callbacks; others (tensorboard, wandb) by choice.
        report_to=list(train.report_to),
        disable_tqdm=True,  # the console bar is pref_core.progress.FoldProgressCallback
        include_num_input_tokens_seen="non_padding",  # tokens per second, without padding
    )


# -- trainer --------------------------------------------------------------------------------------------------------


def resolve_padding(tokenizer) -> tuple[int, Optional[int]]:
    """(pad_token_id, pad_to_multiple_of) of the collators: any pad id works, padded positions are masked."""
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Multiples of 8 suit GPU tensor cores; on CPU they would only add padding.
    return pad_token_id, 8 if torch.cuda.is_available() else None


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
    check_train_inputs(config.train, config.distill, train_ds)
    pad_token_id, pad_to_multiple_of = resolve_padding(tokenizer)
    distill = config.distill if config.distill.enabled else None
    if distill is None and "teacher_probs" in train_ds.column_names:
        logger.info("the train dataset has teacher_probs but distill.teacher_csv is not set: training on hard labels")
    trainer = PreferenceTrainer(
        model=model,
        args=build_training_arguments(config.train, config.model, checkpoints_dir),
        data_collator=PreferenceCollator(pad_token_id, pad_to_multiple_of),
        train_dataset=SwapViewDataset(train_ds) if config.train.swap != "none" else train_ds,
        eval_dataset=eval_ds,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
        swap=config.train.swap,
        distill=distill,
        eval_max_batch_tokens=config.train.eval_max_batch_tokens,
    )
    trainer.remove_callback(PrinterCallback)  # LoggingCallback reports through logging instead of print
    return trainer
