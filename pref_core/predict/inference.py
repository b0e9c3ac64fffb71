"""Batched prediction: class probabilities for a tokenized dataset, with optional a/b swap TTA.

Rows are run longest first in batches padded to the batch's own longest row
(little padding, and an out-of-memory error shows up on the first batch, not
the last); the probabilities come back in the dataset's original order. A batch holds
`batch_size` rows, or with `max_batch_tokens` as many rows as fit that many padded tokens
(pref_core.predict.batching: the first batch is the largest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from pref_core.data.labels import NUM_CLASSES, swap_probabilities
from pref_core.predict.batching import plan_batches


@dataclass
class PreferenceCollator:
    """Pad a list of tokenized rows into a batch (dynamic padding: to the longest row of the batch).

    Right padding; the model finds each row's last real token from the attention mask. Rows with a
    ``label`` column (>= 0) also produce ``labels``. `input_column` picks ``input_ids`` or ``input_ids_swap``.
    Training rows with a teacher (teachers.attach_teacher_probs) also produce ``teacher_probs`` (batch, 3) float32
    and ``has_teacher`` (batch,) bool, for the distillation loss of pref_core.train.trainer.PreferenceTrainer; with
    pseudo-labelled rows among them (fold_rows.fold_train_set), also ``hard_mask`` (batch,) bool (False: no true
    label) and ``row_weight`` (batch,) float32.
    """

    pad_token_id: int
    pad_to_multiple_of: Optional[int] = None  # 8 on GPUs: tensor-core friendly shapes
    input_column: str = "input_ids"

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [row[self.input_column] for row in rows]
        width = max(len(seq) for seq in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)  # (batch, seq)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (batch, seq)
        for i, seq in enumerate(sequences):
            input_ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[i, : len(seq)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "label" in rows[0]:
            labels = torch.as_tensor([row["label"] for row in rows], dtype=torch.long)  # (batch,)
            if bool((labels >= 0).all()):  # test rows carry -1: no labels, no loss
                batch["labels"] = labels
        if "teacher_probs" in rows[0]:
            batch["teacher_probs"] = torch.as_tensor(
                [row["teacher_probs"] for row in rows], dtype=torch.float32
            )  # (batch, 3)
            batch["has_teacher"] = torch.as_tensor(
                [bool(row.get("has_teacher", True)) for row in rows], dtype=torch.bool
            )  # (batch,)
        if "hard_mask" in rows[0]:  # pseudo-labelled rows in the fold's training set (distill.pseudo_from)
            batch["hard_mask"] = torch.as_tensor([bool(row["hard_mask"]) for row in rows], dtype=torch.bool)  # (batch,)
            batch["row_weight"] = torch.as_tensor(
                [float(row["row_weight"]) for row in rows], dtype=torch.float32
            )  # (batch,)
        return batch


def forward_probabilities(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """(rows, 3) float32 probabilities of one collated batch, on the CPU."""
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))[
        "logits"
    ]  # (batch, 3)
    return torch.softmax(logits.float(), dim=-1).cpu()


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _default_pad_token_id(model: nn.Module) -> int:
    """A PreferenceModel knows its tokenizer's pad id; any id works since padding is masked out."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    pad_token_id = getattr(inner, "pad_token_id", None)
    return 0 if pad_token_id is None else int(pad_token_id)


def _predict_column(
    model: nn.Module,
    dataset,
    input_column: str,
    batch_size: int,
    pad_token_id: int,
    pad_to_multiple_of: Optional[int],
    progress: bool,
    max_batch_tokens: Optional[int] = None,
) -> np.ndarray:
    """Probabilities (n, 3) for one input column of a datasets.Dataset, in dataset order."""
    length_column = input_column.replace("input_ids", "length")
    if length_column in dataset.column_names:
        lengths = np.asarray(dataset[length_column])
    else:
        lengths = np.asarray([len(seq) for seq in dataset[input_column]])
    rows_only = dataset.select_columns([input_column])
    return _predict_sequences(
        model,
        lambda index: rows_only[index][input_column],
        lengths,
        batch_size,
        pad_token_id,
        pad_to_multiple_of,
        progress,
        view="swapped" if input_column.endswith("_swap") else "rows",
        max_batch_tokens=max_batch_tokens,
    )


def _predict_sequences(
    model: nn.Module,
    sequences_at: Callable[[list[int]], Sequence[Sequence[int]]],
    lengths: np.ndarray,
    batch_size: int,
    pad_token_id: int,
    pad_to_multiple_of: Optional[int],
    progress: bool,
    view: str = "rows",
    max_batch_tokens: Optional[int] = None,
) -> np.ndarray:
    """Probabilities (n, 3) for n token sequences (`sequences_at(row indices)` returns those rows), in row order."""
    plan = plan_batches(lengths, batch_size, max_batch_tokens, pad_to_multiple_of)
    collate = PreferenceCollator(pad_token_id, pad_to_multiple_of)
    device = _model_device(model)
    probabilities = np.empty((len(lengths), NUM_CLASSES), dtype=np.float32)
    batches = plan.batches
    if progress:
        from pref_core.progress import progress_bar

        batches = progress_bar(batches, desc=f"predict {len(lengths)} {view}", unit="batch")
    for index in batches:
        batch = collate([{"input_ids": seq} for seq in sequences_at(index.tolist())])
        probabilities[index] = forward_probabilities(model, batch, device).numpy()
    return probabilities


def _average_views(model: nn.Module, predict_view: Callable[[bool], np.ndarray], with_swap: bool) -> np.ndarray:
    """`predict_view(False)` (n, 3), averaged with the a/b-swapped `predict_view(True)` when `with_swap`.

    Runs in eval mode without autograd, and puts the model back in the mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            probabilities = predict_view(False)
            if with_swap:
                # Column a of the swapped view is the probability that the original b wins.
                probabilities = (probabilities + swap_probabilities(predict_view(True))) / 2.0
    finally:
        model.train(was_training)
    return probabilities


def predict_token_ids(
    model: nn.Module,
    input_ids: Sequence[Sequence[int]],
    input_ids_swap: Optional[Sequence[Sequence[int]]] = None,
    batch_size: int = 8,
    pad_token_id: Optional[int] = None,
    progress: bool = False,
    pad_to_multiple_of: Optional[int] = None,
    max_batch_tokens: Optional[int] = None,
) -> np.ndarray:
    """`predict_probabilities` over plain lists of token ids (no `datasets`): (n, 3) probabilities in row order.

    With `input_ids_swap` (the a/b-swapped view of the same rows) the two views are averaged, as `predict_probabilities`
    does with tta_swap. `max_batch_tokens`: token-budget batches (see `plan_batches`).
    """
    if len(input_ids) == 0:
        return np.empty((0, NUM_CLASSES), dtype=np.float32)
    if input_ids_swap is not None and len(input_ids_swap) != len(input_ids):
        raise ValueError(f"input_ids_swap has {len(input_ids_swap)} rows, input_ids {len(input_ids)}")
    pad_token_id = _default_pad_token_id(model) if pad_token_id is None else pad_token_id

    def predict_view(swapped: bool) -> np.ndarray:
        rows = input_ids_swap if swapped else input_ids
        return _predict_sequences(
            model,
            lambda index: [rows[i] for i in index],
            np.asarray([len(seq) for seq in rows]),
            batch_size,
            pad_token_id,
            pad_to_multiple_of,
            progress,
            view="swapped" if swapped else "rows",
            max_batch_tokens=max_batch_tokens,
        )

    return _average_views(model, predict_view, with_swap=input_ids_swap is not None)


def predict_probabilities(
    model: nn.Module,
    dataset,
    batch_size: int = 8,
    tta_swap: bool = False,
    pad_token_id: Optional[int] = None,
    progress: bool = False,
    pad_to_multiple_of: Optional[int] = None,
    max_batch_tokens: Optional[int] = None,
) -> np.ndarray:
    """Class probabilities (n, 3), columns in LABEL_COLUMNS order, rows in dataset order.

    `dataset`: a datasets.Dataset with ``input_ids`` (and ``length``). With `tta_swap`, the model also
    reads ``input_ids_swap`` (responses a and b exchanged); those probabilities get their a/b columns
    exchanged back and the two views are averaged. `max_batch_tokens` (train.eval_max_batch_tokens): batches of
    at most that many padded tokens and `batch_size` rows instead of `batch_size` rows each.
    """
    if len(dataset) == 0:
        return np.empty((0, NUM_CLASSES), dtype=np.float32)
    if tta_swap and "input_ids_swap" not in dataset.column_names:
        raise ValueError(
            "tta_swap (train.tta_swap) needs an 'input_ids_swap' column: tokenize the frame with the swapped view "
            "as well, or set train.tta_swap=false"
        )
    pad_token_id = _default_pad_token_id(model) if pad_token_id is None else pad_token_id

    def predict_view(swapped: bool) -> np.ndarray:
        column = "input_ids_swap" if swapped else "input_ids"
        return _predict_column(
            model, dataset, column, batch_size, pad_token_id, pad_to_multiple_of, progress, max_batch_tokens
        )

    return _average_views(model, predict_view, with_swap=tta_swap)
