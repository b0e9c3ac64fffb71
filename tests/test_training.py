"""Fold training on the synthetic marker data: both heads learn, only LoRA (and the classifier head)
change, outputs land where the flow expects them, and a resumed fold ends bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from pref_core.data.labels import LABEL_COLUMNS, NUM_CLASSES
from pref_core.evaluate.metrics import compute_log_loss
from pref_core.train.checks import check_fold_dataset
from pref_core.train.fold import find_resumable_checkpoint, fine_tune_fold
from pref_core.train.sampling import EpochSeededSampler
from pref_core.train.trainer import resolve_mixed_precision, resolve_optim
from tests.factories import CPU_TRAIN, tiny_config, tiny_fold_data

pytestmark = pytest.mark.filterwarnings(
    # torch's own torch.utils.mkldnn uses the deprecated decorator; it is imported lazily by transformers/peft.
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

LN3 = float(np.log(3.0))  # log loss of the uniform prediction
N_ROWS, N_VAL = 400, 80


@pytest.fixture(scope="module")
def fold_data(tmp_path_factory):
    """(train_ds, val_ds, base_model_dir) from the synthetic CSV through the real ingest and tokenizer.

    signal=1.0: every row follows the marker rule, so a model that learns it gets far below ln 3.
    """
    return tiny_fold_data(
        tmp_path_factory.mktemp("fold_data"),
        make_config().prompt,
        n_train=N_ROWS,
        n_val=N_VAL,
        seed=0,
        hidden_size=64,
        intermediate_size=128,
        vocab_size=1000,
    )


def make_config(head: str = "label_token", lora: dict | None = None, **train):
    return tiny_config(
        head,
        prompt={"max_length": 256},
        lora={"r": 16, "alpha": 32, **(lora or {})},
        **{
            **CPU_TRAIN,
            "learning_rate": 2e-3,
            "per_device_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 10,
            "eval_batch_size": 32,
            "logging_steps": 10,
            "seed": 0,
            **train,
        },
    )


class ParameterSnapshots(TrainerCallback):
    """Copies of every parameter of the model the Trainer actually trains, at train begin and end."""

    def __init__(self):
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.trainable: set[str] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


class MetricRecorder(TrainerCallback):
    def __init__(self):
        self.evaluated: list[dict] = []
        self.logged: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluated.append(dict(metrics))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logged.append(dict(logs))


class StopAfterFirstSave(TrainerCallback):
    """Simulates a crash right after the first checkpoint."""

    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = True


# -- learning -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["label_token", "classifier"])
def test_fold_learns_and_changes_only_lora_and_head(fold_data, tmp_path, head):
    train_ds, val_ds, base = fold_data
    snapshots, recorder = ParameterSnapshots(), MetricRecorder()
    result = fine_tune_fold(
        make_config(head, max_steps=200, eval_steps=100),
        train_ds,
        val_ds,
        tmp_path / "fold",
        callbacks=[snapshots, recorder],
        name_or_path=base,
    )

    # Learns the marker rule: far below the uniform prediction's ln 3 = 1.0986 after 200 steps.
    assert result.metrics["val_log_loss"] < 0.8, result.metrics
    assert result.metrics["val_accuracy"] > 0.6, result.metrics
    assert {"val_log_loss", "val_accuracy", "train_loss", "train_runtime_s"} <= set(result.metrics)
    assert result.metrics["train_loss"] < LN3 and result.resumed_from is None

    # TRL-style: every LoRA tensor moved, every base tensor stayed (the classifier head is trained in full).
    assert snapshots.trainable and snapshots.after
    for name, before in snapshots.before.items():
        changed = not torch.equal(before, snapshots.after[name])
        if name in snapshots.trainable:
            assert "lora_" in name or "score.modules_to_save" in name, name
            assert changed, f"trainable {name} did not change"
        else:
            assert not changed, f"frozen {name} changed"
    head_params = [n for n in snapshots.trainable if "score" in n]
    assert (len(head_params) == 2) == (head == "classifier")  # weight + bias

    # The caller's callbacks see the validation metrics under the val_ prefix, in on_evaluate and on_log.
    assert [m["val_log_loss"] for m in recorder.evaluated][-1] == pytest.approx(
        result.metrics["val_log_loss"], abs=1e-6
    )
    assert any("val_accuracy" in logs for logs in recorder.logged)
    assert any("loss" in logs and "learning_rate" in logs for logs in recorder.logged)

    # Held-out predictions: the flow's parquet layout, in val_ds order, consistent with the metrics.
    frame = pd.read_parquet(result.val_predictions)
    assert list(frame.columns) == ["id", *LABEL_COLUMNS, "label"]
    assert frame["id"].tolist() == list(val_ds["id"]) and frame["label"].tolist() == list(val_ds["label"])
    probs = frame[list(LABEL_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert compute_log_loss(frame["label"], probs) == pytest.approx(result.metrics["val_log_loss"], abs=1e-9)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "tokenizer.json").is_file()
    assert find_resumable_checkpoint(tmp_path / "fold" / "checkpoints").name == "checkpoint-200"


# -- resume ---------------------------------------------------------------------------------------------------------


def test_resumed_fold_matches_an_uninterrupted_one(fold_data, tmp_path):
    """Stop after the first checkpoint, rerun: same final adapter and val_log_loss as one straight run.

    Covers what exactness needs: data order (mid-epoch skip and later epochs), optimizer and scheduler
    state, gradient accumulation, and the RNG state (LoRA dropout is on), with the classifier head.
    """
    train_ds, val_ds, base = fold_data
    small_train = train_ds.select(range(48))  # 6 optimizer steps per epoch: 14 steps cross two epoch ends
    config = make_config(
        "classifier",
        lora={"dropout": 0.1},
        max_steps=14,
        save_steps=4,
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
        warmup_steps=2,
        tta_swap=True,
    )
    straight = fine_tune_fold(config, small_train, val_ds, tmp_path / "straight", name_or_path=base)
    interrupted = fine_tune_fold(
        config, small_train, val_ds, tmp_path / "resumed", callbacks=[StopAfterFirstSave()], name_or_path=base
    )
    assert interrupted.metrics["global_step"] == 4
    resumed = fine_tune_fold(config, small_train, val_ds, tmp_path / "resumed", name_or_path=base)

    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.metrics["global_step"] == straight.metrics["global_step"] == 14
    expected = load_file(straight.adapter_dir / "adapter_model.safetensors")
    actual = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert expected.keys() == actual.keys() and any("score" in k for k in expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=0, msg=key)
    assert resumed.metrics["val_log_loss"] == pytest.approx(straight.metrics["val_log_loss"], abs=1e-4)
    # tta_swap: the reported loss is the averaged view's; the plain one is kept alongside.
    assert "val_log_loss_no_tta" in straight.metrics


# -- pieces ---------------------------------------------------------------------------------------------------------


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    lengths = list(np.random.default_rng(0).integers(5, 100, size=64))
    sampler = EpochSeededSampler(lengths, batch_size=4, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(64)) and list(sampler) == first
    assert list(EpochSeededSampler(lengths, batch_size=4, seed=7)) == first  # a fresh (resumed) process agrees
    sampler.set_epoch(1)
    assert list(sampler) != first

    # Grouped by length: batches are far more homogeneous than a plain shuffle.
    def padding(order):
        return sum(
            max(lengths[i] for i in order[k : k + 4]) * 4 - sum(lengths[i] for i in order[k : k + 4])
            for k in range(0, 64, 4)
        )

    plain = list(EpochSeededSampler(lengths, batch_size=4, seed=7, group_by_length=False))
    assert sorted(plain) == list(range(64)) and padding(first) < padding(plain) / 2


def test_fold_dataset_check_reports_every_problem():
    from datasets import Dataset

    with pytest.raises(ValueError, match=r"missing columns \['id'\].*without a class label"):
        check_fold_dataset(Dataset.from_dict({"input_ids": [[1], [2]], "label": [0, -1]}), "train")
    check_fold_dataset(Dataset.from_dict({"id": ["x"], "input_ids": [[1]], "label": [NUM_CLASSES - 1]}), "train")


def test_incomplete_checkpoints_are_not_resumed(tmp_path):
    for step, complete in ((5, True), (10, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert find_resumable_checkpoint(tmp_path).name == "checkpoint-5"
    assert find_resumable_checkpoint(tmp_path / "missing") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU resolution of auto")
def test_auto_optimizer_and_precision_on_cpu():
    train = make_config().train.model_copy(update={"optim": "auto", "mixed_precision": "auto"})
    assert resolve_optim(train) == "adamw_torch"
    assert resolve_mixed_precision(train) == "no"
    assert resolve_optim(train.model_copy(update={"optim": "adamw_8bit"}), quantized=True) == "paged_adamw_8bit"
    with pytest.raises(ValueError, match="train.mixed_precision"):
        resolve_mixed_precision(train.model_copy(update={"mixed_precision": "fp16"}))


def test_cpu_threads_apply_only_inside_the_block():
    from pref_core.train.fold import torch_cpu_threads

    before = torch.get_num_threads()
    with torch_cpu_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_cpu_threads(None):
        assert torch.get_num_threads() == before
