"""The shipped recipes load, and the seed recipe is exactly the notebook's."""

from __future__ import annotations

from pathlib import Path

import pytest

from pref_core.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_validates(path):
    load_config(path)


def test_seed_recipe_is_the_notebooks():
    c = load_config(Path(__file__).resolve().parents[1] / "configs" / "seed-llama3-8b.yaml")
    assert c.model.name_or_path == "unsloth/llama-3-8b-Instruct-bnb-4bit"
    assert c.model.quantization == "4bit"  # what the pre-quantized checkpoint trained as (not 8-bit)
    assert c.model.head == "label_token" and c.model.label_tokens == ("a", "b", "tie")
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.target_modules) == (16, 32, 0.05, ["q_proj", "k_proj", "v_proj"])
    assert c.train.learning_rate == 2e-4
    assert (c.train.per_device_batch_size, c.train.gradient_accumulation_steps, c.train.num_epochs) == (2, 2, 1)
    assert (c.prompt.max_length, c.prompt.template, c.prompt.truncation) == (1024, "seed", "seed")
    assert (c.train.warmup_steps, c.train.optim, c.train.mixed_precision) == (20, "adamw_8bit", "fp16")
    assert c.cv.n_folds == 5


@pytest.mark.parametrize("name", ["gemma2-9b-cls.yaml", "llama3-8b-cls.yaml"])
def test_winner_recipes_use_classifier_all_linear_and_swap(name):
    c = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert c.model.head == "classifier" and c.lora.target_modules == "all-linear"
    assert c.train.swap == "both" and c.train.tta_swap and c.calibration.method == "temperature"


@pytest.mark.slow
def test_winners_options_together_through_the_flow(prefect_harness, tmp_path, synthetic_csvs):
    """classifier head + all-linear LoRA + swap=both + swap TTA + multi-turn template + distillation
    + calibration, end to end on the tiny model: the pipeline wires every option."""
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from arena_pref.flows.cv_training import cv_training
    from pref_core.data import read_arena_csv
    from pref_core.labels import LABEL_COLUMNS

    train = read_arena_csv(synthetic_csvs[0], "train").frame
    probs = np.full((len(train), 3), 0.1)
    probs[np.arange(len(train)), train["label"].to_numpy()] = 0.8
    teacher = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    teacher.insert(0, "id", train["id"])
    teacher_csv = tmp_path / "teacher.csv"
    teacher.to_csv(teacher_csv, index=False)

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "tiny.yaml", [
        f"data.train_csv={synthetic_csvs[0]}", f"data.test_csv={synthetic_csvs[1]}",
        f"output_dir={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "model.head=classifier", "train.swap=both", "train.tta_swap=true", "prompt.template=multi_turn",
        "prompt.truncation=proportional", f"distill.teacher_csv={teacher_csv}", "distill.kl_weight=0.5",
        "cv.execution=in_process", "cv.folds=[0]", "train.num_epochs=1",
    ])
    result = cv_training(config)
    client = MlflowClient(config.tracking.uri)
    parent = client.get_run(result["parent_run_id"])
    assert {"oof_log_loss", "oof_log_loss_calibrated", "temperature"} <= set(parent.data.metrics)
    assert parent.data.metrics["oof_log_loss_calibrated"] <= parent.data.metrics["oof_log_loss"] + 1e-9
    fold = client.get_run(result["fold_run_ids"][0])
    assert "val_log_loss_no_tta" in fold.data.metrics  # swap TTA evaluated
    submission = pd.read_csv(result["submission_path"])
    np.testing.assert_allclose(submission[list(LABEL_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)
