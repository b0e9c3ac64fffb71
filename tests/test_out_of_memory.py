"""CUDA out-of-memory in a fold ends it with one line (phase, batch, the config keys that cut memory), the
traceback in the fold's error.log; mocked on CPU by raising torch.cuda.OutOfMemoryError inside a step."""

from __future__ import annotations

import pytest
import torch

from pref_core.train import fold, trainer
from tests.factories import tiny_config, tiny_fold_data


@pytest.fixture(scope="module")
def tiny_fold(tmp_path_factory):
    config = tiny_config(
        prompt={"max_length": 96},
        lora={"r": 2, "alpha": 4},
        per_device_batch_size=4,
        gradient_accumulation_steps=3,
        max_steps=2,
        warmup_steps=0,
        optim="adamw_torch",
        mixed_precision="no",
        eval_batch_size=8,
        save_steps=1000,
    )
    train_ds, val_ds, base = tiny_fold_data(
        tmp_path_factory.mktemp("oom"),
        config.prompt,
        n_train=40,
        n_val=8,
        seed=0,
        with_swap=False,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        vocab_size=600,
    )
    return config, train_ds, val_ds, base


def _raise_oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)")


def test_out_of_memory_in_a_training_step_is_one_line_with_the_batch_and_the_fix(tiny_fold, tmp_path, monkeypatch):
    config, train_ds, val_ds, base = tiny_fold
    shapes = []
    real_step = trainer.PreferenceTrainer.training_step

    def step(self, model, inputs, num_items_in_batch=None):
        shapes.append(tuple(inputs["input_ids"].shape))
        return real_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(trainer.PreferenceTrainer, "training_step", step)
    monkeypatch.setattr(trainer.PreferenceTrainer, "compute_loss", _raise_oom)
    with pytest.raises(fold.FoldOutOfMemoryError) as err:
        fold.fine_tune_fold(config, train_ds, val_ds, tmp_path / "fold", name_or_path=base)
    message = str(err.value)
    rows, length = shapes[-1]
    assert "\n" not in message
    assert f"during training at batch size {rows} (rows), sequence length {length}" in message
    for key in fold.MEMORY_KEYS:
        assert key in message
    assert "now 4" in message and "now 3" in message  # current per-device batch and accumulation
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback to print
    log = (tmp_path / "fold" / "error.log").read_text()
    assert "Traceback" in log and "Tried to allocate 2.00 GiB" in log


def test_out_of_memory_in_test_prediction_names_the_eval_batch(tiny_fold, tmp_path, monkeypatch):
    config, train_ds, val_ds, base = tiny_fold
    monkeypatch.setattr(fold, "predict_probabilities", _raise_oom)
    with pytest.raises(
        fold.FoldOutOfMemoryError,
        match=r"during test prediction at up to batch size 8 "
        r"\(train.eval_batch_size\), sequence length 96",
    ):
        fold.fine_tune_fold(config, train_ds, val_ds, tmp_path / "fold", name_or_path=base, test_ds=val_ds)


def test_fold_out_of_memory_is_a_user_error_of_the_cli():
    from arena_pref.tasks.training import FoldFailedError
    from pref_core.errors import UserError

    assert issubclass(fold.FoldOutOfMemoryError, UserError) and issubclass(FoldFailedError, UserError)
