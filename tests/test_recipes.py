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
    assert c.model.name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
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
