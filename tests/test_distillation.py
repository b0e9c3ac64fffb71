"""Soft labels from a teacher (distill section): the loss against hand-computed values and its limits,
validation of the teacher file, joining it to the train rows, and training that follows the teacher.
"""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pref_core.data.arena import DataValidationError
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.data.teachers import attach_teacher_probs, read_teacher_probs
from pref_core.model.losses import distillation_loss
from pref_core.model.preference import build_model
from pref_core.predict.inference import PreferenceCollator
from pref_core.train.fold import fine_tune_fold, load_training_tokenizer
from pref_core.train.trainer import build_trainer
from tests.factories import CPU_TRAIN, tiny_config, tiny_fold_data

LN3 = math.log(3.0)
SUM_COLUMN = "+".join(LABEL_COLUMNS)


# -- the loss -------------------------------------------------------------------------------------------------------


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_loss_matches_hand_computation():
    """logits z = (2, 0, -1), label a, teacher p = (0.7, 0.2, 0.1), T = 2, hard_weight 0.5, kl_weight 2:

    CE = -log softmax(z)_a = 0.169846; teacher_T = softmax(log p / 2) = (0.52288, 0.27949, 0.19763);
    student_T = softmax(z / 2) = (0.62853, 0.23122, 0.14024); KL(teacher_T || student_T) = 0.024547;
    loss = 0.5 * 0.169846 + 2 * 2^2 * 0.024547 = 0.281299.
    """
    z, p, temperature = [2.0, 0.0, -1.0], [0.7, 0.2, 0.1], 2.0
    ce = -math.log(softmax(z)[0])
    teacher_t = softmax([math.log(x) / temperature for x in p])
    student_t = softmax([x / temperature for x in z])
    kl = sum(t * math.log(t / s) for t, s in zip(teacher_t, student_t))
    expected = 0.5 * ce + 2.0 * temperature**2 * kl
    assert expected == pytest.approx(0.281299, abs=1e-6)

    loss = distillation_loss(
        torch.tensor([z]), torch.tensor([0]), torch.tensor([p]), hard_weight=0.5, kl_weight=2.0, temperature=2.0
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # A batch is the mean of its rows.
    second = distillation_loss(
        torch.tensor([[0.0, 1.0, 0.5]]),
        torch.tensor([2]),
        torch.tensor([[0.1, 0.3, 0.6]]),
        hard_weight=0.5,
        kl_weight=2.0,
        temperature=2.0,
    )
    both = distillation_loss(
        torch.tensor([z, [0.0, 1.0, 0.5]]),
        torch.tensor([0, 2]),
        torch.tensor([p, [0.1, 0.3, 0.6]]),
        hard_weight=0.5,
        kl_weight=2.0,
        temperature=2.0,
    )
    assert both.item() == pytest.approx((expected + second.item()) / 2, abs=1e-6)


def test_loss_limits_are_plain_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=generator) * 3
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    teacher = torch.softmax(torch.randn(6, 3, generator=generator), dim=-1)
    ce = F.cross_entropy(logits, labels)
    # kl_weight = 0: the teacher does not matter.
    no_kl = distillation_loss(logits, labels, teacher, kl_weight=0.0, temperature=3.0)
    assert no_kl.item() == pytest.approx(ce.item(), abs=1e-6)
    # hard_weight = 0 with a one-hot teacher on the label at T = 1: KL(one-hot || q) = -log q_label = CE.
    one_hot = F.one_hot(labels, 3).float()
    soft_only = distillation_loss(logits, labels, one_hot, hard_weight=0.0, temperature=1.0)
    assert soft_only.item() == pytest.approx(ce.item(), abs=1e-6)
    # A teacher equal to the student (at any T) adds nothing.
    same = distillation_loss(logits, labels, torch.softmax(logits, dim=-1), temperature=2.0)
    assert same.item() == pytest.approx(ce.item(), abs=1e-5)


def test_rows_without_teacher_get_the_hard_loss_only():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    teacher = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.0, 0.0]])  # row 2: a placeholder, even an invalid one
    has_teacher = torch.tensor([True, False])
    loss = distillation_loss(logits, labels, teacher, has_teacher, hard_weight=1.0, kl_weight=1.0, temperature=2.0)
    with_teacher = distillation_loss(logits[:1], labels[:1], teacher[:1], temperature=2.0)
    hard_only = F.cross_entropy(logits[1:], labels[1:])
    assert loss.item() == pytest.approx((with_teacher.item() + hard_only.item()) / 2, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# -- the teacher file -----------------------------------------------------------------------------------------------


def write_teacher(path, rows, header=("id", *LABEL_COLUMNS)):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_read_teacher_probs_renormalizes_and_keeps_ids_as_text(tmp_path):
    # Row 007 sums to 0.9995: within the 1e-3 tolerance, then renormalized.
    path = write_teacher(tmp_path / "t.csv", [("007", "0.5", "0.2995", "0.2"), ("12", "1", "0", "0.0")])
    frame = read_teacher_probs(path)
    assert list(frame.columns) == ["id", *LABEL_COLUMNS] and frame["id"].tolist() == ["007", "12"]
    probs = frame[list(LABEL_COLUMNS)].to_numpy()
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs, [np.array([0.5, 0.2995, 0.2]) / 0.9995, [1.0, 0.0, 0.0]], rtol=1e-12)
    # A fold's val_predictions (parquet, with a label column) is a teacher file too.
    parquet = tmp_path / "oof.parquet"
    frame.assign(label=[0, 0]).to_parquet(parquet, index=False)
    pd.testing.assert_frame_equal(read_teacher_probs(parquet), frame)


def test_read_teacher_probs_reports_every_bad_row(tmp_path):
    path = write_teacher(
        tmp_path / "t.csv",
        [
            ("r1", "0.5", "abc", "0.5"),  # not a number
            ("r2", "0.5", "0.3", "0.1"),  # sums to 0.9
            ("r3", "1.5", "-0.5", "0"),  # out of [0, 1] (sums to 1)
            ("r4", "0.2", "0.2", "0.6"),  # repeated id
            ("r4", "0.2", "0.2", "0.6"),
            ("r5", "0.2", "0.2", "0.6"),  # fine
            ("", "0.2", "0.2", "0.6"),  # empty id
        ],
    )
    with pytest.raises(DataValidationError) as caught:
        read_teacher_probs(path)
    err = caught.value
    found = {(p.row_id, p.column) for p in err.problems}
    assert found == {
        ("r1", "winner_model_b"),
        ("r2", SUM_COLUMN),
        ("r3", "winner_model_a"),
        ("r3", "winner_model_b"),
        ("r4", "id"),
        ("<empty, data row 7>", "id"),
    }
    assert sum(p.row_id == "r4" for p in err.problems) == 2  # both copies
    reasons = {(p.row_id, p.column): p.reason for p in err.problems}
    assert "'abc' is not a number" in reasons[("r1", "winner_model_b")]
    assert "sum to 0.9" in reasons[("r2", SUM_COLUMN)] and "fix:" in reasons[("r2", SUM_COLUMN)]
    assert "outside [0, 1]" in reasons[("r3", "winner_model_a")]
    assert "unique" in reasons[("r4", "id")]
    assert "6 of 7 teacher rows are invalid" in str(err) and "distill.teacher_csv" in str(err)


def test_read_teacher_probs_file_level_problems(tmp_path):
    with pytest.raises(DataValidationError, match=r"file not found; fix: check distill.teacher_csv"):
        read_teacher_probs(tmp_path / "missing.csv")
    path = write_teacher(
        tmp_path / "cols.csv", [("r1", "0.5", "0.5")], header=("id", "winner_model_a", "winner_model_b")
    )
    with pytest.raises(DataValidationError, match=r"missing required column\(s\) \['winner_tie'\]"):
        read_teacher_probs(path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataValidationError, match="file is empty"):
        read_teacher_probs(tmp_path / "empty.csv")
    path = write_teacher(tmp_path / "header.csv", [])
    with pytest.raises(DataValidationError, match="no rows"):
        read_teacher_probs(path)


def test_attach_teacher_probs_marks_rows_without_teacher():
    from datasets import Dataset

    dataset = Dataset.from_dict({"id": ["a", "b", "c"], "input_ids": [[1], [2], [3]], "label": [0, 1, 2]})
    teacher = pd.DataFrame(
        {
            "id": ["c", "a", "zz"],
            "winner_model_a": [0.1, 0.6, 0.5],
            "winner_model_b": [0.2, 0.3, 0.5],
            "winner_tie": [0.7, 0.1, 0.0],
        }
    )
    out = attach_teacher_probs(dataset, teacher)
    assert out["has_teacher"] == [True, False, True]
    np.testing.assert_allclose(out["teacher_probs"], [[0.6, 0.3, 0.1], [1 / 3] * 3, [0.1, 0.2, 0.7]])
    assert out["input_ids"] == dataset["input_ids"]  # the rest is untouched
    # Attaching another teacher replaces the columns.
    again = attach_teacher_probs(out, teacher.assign(id=["b", "x", "y"]))
    assert again["has_teacher"] == [False, True, False] and again.column_names.count("teacher_probs") == 1
    with pytest.raises(ValueError, match="read_teacher_probs"):
        attach_teacher_probs(dataset, teacher.drop(columns=["winner_tie"]))

    batch = PreferenceCollator(pad_token_id=0)([out[0], out[1]])
    assert batch["teacher_probs"].shape == (2, 3) and batch["teacher_probs"].dtype == torch.float32
    assert batch["has_teacher"].tolist() == [True, False]


# -- training -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fold_data(tmp_path_factory):
    """(train_ds, val_ds, base_model_dir) of synthetic rows that all follow the marker rule."""
    return tiny_fold_data(
        tmp_path_factory.mktemp("distill_fold"),
        make_config().prompt,
        n_train=200,
        n_val=50,
        seed=2,
        hidden_size=64,
        intermediate_size=128,
        vocab_size=600,
    )


def make_config(distill: dict | None = None, **train):
    return tiny_config(
        "classifier",
        prompt={"max_length": 192, "truncation": "seed_capped"},  # every example within 192 tokens
        lora={"r": 8, "alpha": 16},
        distill=distill or {},
        **{
            **CPU_TRAIN,
            "learning_rate": 3e-3,
            "per_device_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 5,
            "eval_batch_size": 64,
            "logging_steps": 10,
            "seed": 0,
            **train,
        },
    )


def teacher_frame(dataset, confidence: float, shift: int = 0) -> pd.DataFrame:
    """A teacher putting `confidence` on class (label + shift) % 3 of each row (shift 0: the true class)."""
    labels = np.asarray(dataset["label"])
    probs = np.full((len(labels), 3), (1 - confidence) / 2)
    probs[np.arange(len(labels)), (labels + shift) % 3] = confidence
    return pd.DataFrame({"id": dataset["id"], **{c: probs[:, k] for k, c in enumerate(LABEL_COLUMNS)}})


def test_trainer_loss_is_the_distillation_loss_while_training(fold_data, tmp_path):
    train_ds, val_ds, base = fold_data
    config = make_config({"teacher_csv": "teacher.csv", "hard_weight": 0.3, "kl_weight": 0.7, "temperature": 2.0})
    with_teacher = attach_teacher_probs(train_ds, teacher_frame(train_ds, 0.6, shift=1))
    tokenizer = load_training_tokenizer(config.model, base)
    trainer = build_trainer(
        config,
        build_model(config.model, config.lora, tokenizer, name_or_path=base, seed=config.train.seed),
        tokenizer,
        with_teacher,
        val_ds,
        tmp_path,
    )
    batch = trainer.data_collator([with_teacher[i] for i in range(4)])
    model = trainer.model
    model.train()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
    expected = distillation_loss(
        logits,
        batch["labels"],
        batch["teacher_probs"],
        batch["has_teacher"],
        hard_weight=0.3,
        kl_weight=0.7,
        temperature=2.0,
    )
    assert trainer.compute_loss(model, batch).item() == pytest.approx(expected.item(), abs=1e-6)
    assert "teacher_probs" in batch  # the caller's batch is left as it was
    model.eval()  # validation scores the plain cross-entropy
    plain = F.cross_entropy(logits.detach(), batch["labels"])
    assert trainer.compute_loss(model, batch).item() == pytest.approx(plain.item(), abs=1e-5)


def test_missing_or_unmatched_teacher_names_the_field(fold_data, tmp_path):
    train_ds, val_ds, base = fold_data
    config = make_config({"teacher_csv": "teacher.csv"})
    with pytest.raises(ValueError, match=r"distill\.teacher_csv='teacher.csv' is set but .* no 'teacher_probs'"):
        fine_tune_fold(config, train_ds, val_ds, tmp_path / "a", name_or_path=base)
    strangers = teacher_frame(train_ds, 0.9).assign(id=lambda f: "x" + f["id"])
    with pytest.raises(ValueError, match=r"distill\.teacher_csv.*none of the 150 train rows has a teacher"):
        fine_tune_fold(config, attach_teacher_probs(train_ds, strangers), val_ds, tmp_path / "b", name_or_path=base)


def test_training_follows_the_teacher(fold_data, tmp_path, caplog):
    """With the hard labels off (hard_weight=0), what the model learns comes from the teacher alone: a teacher
    confident in the true class must beat the uniform prediction, one confident in a wrong class must do far
    worse. swap=random also exercises the exchanged teacher of swapped rows (a teacher left unexchanged
    would point to the wrong side half of the time). 30 of the 150 rows have no teacher (extra data)."""
    train_ds, val_ds, base = fold_data
    distill = {"teacher_csv": "teacher.csv", "hard_weight": 0.0, "kl_weight": 1.0, "temperature": 2.0}
    # lr 2e-3: at 3e-3 the true-teacher run stayed at the prior (1.09) once the seed template joined turns
    # by " " and read nulls as "" (35 of the 200 rows changed ids).
    config = make_config(distill, swap="random", max_steps=200, learning_rate=2e-3)
    losses = {}
    for name, shift in (("true", 0), ("wrong", 1)):
        teacher = teacher_frame(train_ds, 0.9, shift=shift).iloc[30:]
        with caplog.at_level(logging.INFO, logger="pref_core.train.checks"):
            result = fine_tune_fold(
                config, attach_teacher_probs(train_ds, teacher), val_ds, tmp_path / name, name_or_path=base
            )
        losses[name] = result.metrics["val_log_loss"]
    assert "distillation: 120 of 150 train rows have a teacher" in caplog.text
    assert "the 30 train rows without a teacher add no loss" in caplog.text  # hard_weight=0
    # Measured over train.seed 0..2 at lr 3e-3 with the old seed text: true 0.26-0.30, wrong 1.30-1.36 (ln 3 = 1.0986).
    assert losses["true"] < LN3 - 0.3, losses
    assert losses["wrong"] > losses["true"] + 0.5, losses
