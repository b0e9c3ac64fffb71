"""a/b swap augmentation in training (train.swap): which order each pair is shown in, per epoch and per step,
with labels exchanged to match; a fold trains with each mode and resumes exactly with swap=random.

Batches are checked on rows whose token ids say who they are: row i reads [100 + i, 1, ...] as tokenized
and [100 + i, 2, ...] swapped, so every collated row can be traced back to its pair and its order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from pref_core.data.labels import swap_label_index
from pref_core.train.fold import fine_tune_fold, load_training_tokenizer
from pref_core.train.sampling import EpochSeededSampler, SwapViewDataset
from pref_core.train.trainer import build_trainer
from tests.factories import CPU_TRAIN, lora_model, tiny_config, tiny_fold_data

N_TRACED = 24  # rows of the traced dataset
ORIGINAL, SWAPPED = 1, 2  # second token of a traced row: which order it is in


@pytest.fixture(scope="module")
def fold_data(tmp_path_factory):
    """(train_ds, val_ds, base_model_dir): synthetic rows tokenized with the swapped view, a tiny model."""
    return tiny_fold_data(
        tmp_path_factory.mktemp("swap_fold"),
        make_config().prompt,
        n_train=160,
        n_val=40,
        seed=1,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=600,
    )


def make_config(lora: dict | None = None, **train):
    return tiny_config(
        "classifier",
        prompt={"max_length": 192},
        lora={"r": 8, "alpha": 16, **(lora or {})},
        **{
            **CPU_TRAIN,
            "learning_rate": 2e-3,
            "per_device_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 2,
            "eval_batch_size": 64,
            "logging_steps": 2,
            "seed": 0,
            **train,
        },
    )


def traced_dataset(n: int = N_TRACED) -> Dataset:
    """Rows whose ids encode (row, order); lengths vary so that length grouping has work to do."""
    return Dataset.from_dict(
        {
            "id": [f"r{i}" for i in range(n)],
            "input_ids": [[100 + i, ORIGINAL] + [5] * (i % 7) for i in range(n)],
            "length": [2 + i % 7 for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "input_ids_swap": [[100 + i, SWAPPED] + [5] * (i % 7) for i in range(n)],
            "length_swap": [2 + i % 7 for i in range(n)],
        }
    )


def trace_batch(batch) -> list[tuple[int, bool, int]]:
    """(row, swapped, label) of every row of a collated batch."""
    return [
        (int(ids[0]) - 100, int(ids[1]) == SWAPPED, int(label))
        for ids, label in zip(batch["input_ids"], batch["labels"])
    ]


def expected_label(row: int, swapped: bool) -> int:
    label = row % 3  # traced_dataset's labels
    return swap_label_index(label) if swapped else label


@pytest.fixture(scope="module")
def traced_trainer_factory(fold_data, tmp_path_factory):
    """build_trainer(config, ...) on the traced rows, with the fold's tiny model (never run on them)."""

    _, val_ds, base = fold_data
    tokenizer = load_training_tokenizer(make_config().model, base)
    model = lora_model(make_config(), tokenizer, base)
    folder = tmp_path_factory.mktemp("traced")

    def factory(config):
        return build_trainer(config, model, tokenizer, traced_dataset(), val_ds, folder / "checkpoints")

    return factory


def epoch_batches(trainer, epoch: int) -> list[list[tuple[int, bool, int]]]:
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)  # what the Trainer's loop does at each epoch start
    return [trace_batch(batch) for batch in loader]


# -- sampler and views --------------------------------------------------------------------------------------------


def test_random_swap_is_a_seeded_coin_per_pair_and_epoch():
    lengths = list(np.random.default_rng(0).integers(5, 100, size=64))
    plain = EpochSeededSampler(lengths, batch_size=8, seed=3)
    sampler = EpochSeededSampler(lengths, batch_size=8, seed=3, swap="random")
    keys = list(sampler)
    assert len(sampler) == len(keys) == 64
    # Same order as swap=none; each pair once, as key i (original) or 64 + i (swapped).
    assert [k % 64 for k in keys] == list(plain)
    views = {k % 64: k // 64 for k in keys}
    assert sorted(views) == list(range(64)) and set(views.values()) == {0, 1}
    assert 16 < sum(views.values()) < 48  # a fair coin, not all one side
    assert list(EpochSeededSampler(lengths, batch_size=8, seed=3, swap="random")) == keys  # a resumed process agrees

    sampler.set_epoch(1)
    views_1 = {k % 64: k // 64 for k in sampler}
    assert views_1 != views  # a fresh choice each epoch
    sampler.set_epoch(0)
    assert list(sampler) == keys
    other_seed = {k % 64: k // 64 for k in EpochSeededSampler(lengths, batch_size=8, seed=4, swap="random")}
    assert other_seed != views


def test_both_swap_puts_each_pair_twice_side_by_side():
    lengths = list(range(10, 30))
    keys = list(EpochSeededSampler(lengths, batch_size=4, seed=0, swap="both"))
    assert len(keys) == len(EpochSeededSampler(lengths, batch_size=4, seed=0, swap="both")) == 40
    assert keys[0::2] == list(EpochSeededSampler(lengths, batch_size=4, seed=0))
    assert [k - 20 for k in keys[1::2]] == keys[0::2]


def test_swap_views_exchange_inputs_labels_and_teacher():
    dataset = traced_dataset(3).add_column("teacher_probs", [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]])
    views = SwapViewDataset(dataset)
    assert len(views) == 6 and views.lengths == [2, 3, 4]
    for i in range(3):
        original, swapped = views[i], views[3 + i]
        assert original["input_ids"] == dataset[i]["input_ids"] and original["label"] == i
        assert swapped["input_ids"] == dataset[i]["input_ids_swap"]
        assert swapped["label"] == [1, 0, 2][i]  # a <-> b, tie stays
        a, b, tie = dataset[i]["teacher_probs"]
        assert original["teacher_probs"] == [a, b, tie] and swapped["teacher_probs"] == [b, a, tie]
        assert original["has_teacher"] and swapped["has_teacher"]  # no has_teacher column: all have one
    with pytest.raises(IndexError):
        views[6]


def test_swap_without_swapped_view_names_the_field(fold_data, tmp_path):
    train_ds, val_ds, base = fold_data
    with pytest.raises(ValueError, match=r"train\.swap=random needs an 'input_ids_swap' column.*with_swap=True"):
        fine_tune_fold(
            make_config(swap="random"),
            train_ds.remove_columns(["input_ids_swap", "length_swap"]),
            val_ds,
            tmp_path / "fold",
            name_or_path=base,
        )
    with pytest.raises(ValueError, match=r"train\.swap"):
        SwapViewDataset(traced_dataset().remove_columns(["input_ids_swap"]))


# -- batches as the Trainer draws them ------------------------------------------------------------------------------


def test_random_swap_batches(traced_trainer_factory):
    trainer = traced_trainer_factory(make_config(swap="random", per_device_batch_size=4))
    first = epoch_batches(trainer, 0)
    assert len(first) == N_TRACED // 4 and all(len(batch) == 4 for batch in first)
    assert trainer.num_examples(trainer.get_train_dataloader()) == N_TRACED  # rows shown per epoch
    rows = [row for batch in first for row in batch]
    assert sorted(r for r, _, _ in rows) == list(range(N_TRACED))  # each pair once per epoch
    assert all(label == expected_label(r, swapped) for r, swapped, label in rows)
    assert {swapped for _, swapped, _ in rows} == {False, True}

    second = epoch_batches(trainer, 1)
    assert all(label == expected_label(r, s) for batch in second for r, s, label in batch)
    views = lambda batches: {r: s for batch in batches for r, s, _ in batch}  # noqa: E731
    assert views(second) != views(first)
    # A fresh Trainer (a resumed process) draws the same batches for the same epoch.
    assert epoch_batches(traced_trainer_factory(make_config(swap="random", per_device_batch_size=4)), 1) == second


def test_both_swap_batches_hold_every_pair_in_both_orders(traced_trainer_factory):
    config = make_config(swap="both", per_device_batch_size=4, gradient_accumulation_steps=2)
    trainer = traced_trainer_factory(config)
    plain = traced_trainer_factory(make_config(per_device_batch_size=4, gradient_accumulation_steps=2))
    for epoch in (0, 1):
        batches = epoch_batches(trainer, epoch)
        # per_device_batch_size counts pairs: as many batches (and optimizer steps) per epoch as swap=none.
        assert len(batches) == len(epoch_batches(plain, epoch)) == math.ceil(N_TRACED / 4)
        for batch in batches:
            assert len(batch) == 8
            for (row, swapped, label), (row_2, swapped_2, label_2) in zip(batch[0::2], batch[1::2]):
                assert row == row_2 and not swapped and swapped_2
                assert label == expected_label(row, False) and label_2 == expected_label(row, True)
        assert sorted(r for batch in batches for r, _, _ in batch[0::2]) == list(range(N_TRACED))
    assert trainer.args.per_device_train_batch_size == 8  # the Trainer counts rows
    assert trainer.num_examples(trainer.get_train_dataloader()) == 2 * N_TRACED


# -- training -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("swap", ["random", "both"])
def test_fold_trains_with_swap(fold_data, tmp_path, swap):
    train_ds, val_ds, base = fold_data
    result = fine_tune_fold(make_config(swap=swap, max_steps=6), train_ds, val_ds, tmp_path / "fold", name_or_path=base)
    assert result.metrics["global_step"] == 6
    assert math.isfinite(result.metrics["train_loss"]) and math.isfinite(result.metrics["val_log_loss"])
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


class StopAfterFirstSave(TrainerCallback):
    """Simulates a crash right after the first checkpoint."""

    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = True


def test_resume_with_random_swap_is_exact(fold_data, tmp_path):
    """Stop after the first checkpoint and rerun: the same adapter as one straight run, across epoch ends
    (each epoch's coins are drawn again) and mid-epoch (the skipped batches must be the same ones)."""
    train_ds, val_ds, base = fold_data
    small_train = train_ds.select(range(24))  # 3 optimizer steps per epoch: 8 steps cross two epoch ends
    config = make_config(
        lora={"dropout": 0.1},
        swap="random",
        max_steps=8,
        save_steps=4,
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
    )
    straight = fine_tune_fold(config, small_train, val_ds, tmp_path / "straight", name_or_path=base)
    interrupted = fine_tune_fold(
        config, small_train, val_ds, tmp_path / "resumed", callbacks=[StopAfterFirstSave()], name_or_path=base
    )
    assert interrupted.metrics["global_step"] == 4
    resumed = fine_tune_fold(config, small_train, val_ds, tmp_path / "resumed", name_or_path=base)

    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.metrics["global_step"] == straight.metrics["global_step"] == 8
    expected = load_file(straight.adapter_dir / "adapter_model.safetensors")
    actual = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=0, msg=key)
    assert resumed.metrics["val_log_loss"] == pytest.approx(straight.metrics["val_log_loss"], abs=1e-5)
