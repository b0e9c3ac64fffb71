"""What the Trainer samples for training: both a/b orders of every pair, in an order that (seed, epoch) decides.

* `SwapViewDataset`: row k as tokenized (key k) and with responses a and b exchanged (key n + k).
* `EpochSeededSampler`: a shuffled, optionally length-grouped order that depends only on (seed, epoch), so a
  resumed fold sees the same rows in the same order as an uninterrupted one; with train.swap it also picks
  which order of each pair an epoch shows (``random``) or shows both side by side (``both``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from pref_core.config.choices import SWAP_MODES, SwapMode, require_choice
from pref_core.data.labels import swap_label_index, swap_probabilities

__all__ = ["SWAP_MODES", "EpochSeededSampler", "SwapViewDataset", "check_swap_mode", "dataset_lengths"]


def check_swap_mode(swap: str) -> None:
    require_choice("train.swap", swap, SwapMode)


def dataset_lengths(dataset) -> list[int]:
    """Token counts of the rows (the ``length`` column when the tokenizer wrote one)."""
    if "length" in dataset.column_names:
        return list(dataset["length"])
    return [len(ids) for ids in dataset["input_ids"]]


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
        wanted = ("input_ids", "input_ids_swap", "label", "teacher_probs", "has_teacher", "hard_mask", "row_weight")
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
        if "hard_mask" in row:  # a pseudo-labelled row's marks do not depend on the order of its answers
            item["hard_mask"], item["row_weight"] = bool(row["hard_mask"]), float(row["row_weight"])
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
        check_swap_mode(swap)
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
