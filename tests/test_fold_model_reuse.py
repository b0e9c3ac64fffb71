"""A fold predicts its test rows with the model it just trained, in memory: one base load per fold, and the
same probabilities as reloading the base and the saved adapter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pref_core.data.arena import read_arena_csv
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.model import preference
from pref_core.predict.inference import predict_probabilities
from pref_core.text.tokenization import tokenize_frame
from pref_core.train.fold import fine_tune_fold
from pref_core.train.result import TEST_PREDICTIONS_FILE
from tests.factories import CPU_TRAIN, synthetic_train, tiny_base_for, tiny_config


def _config(head: str, tta_swap: bool):
    return tiny_config(
        head,
        prompt={"max_length": 128},
        **CPU_TRAIN,
        learning_rate=2e-3,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=6,
        warmup_steps=0,
        eval_batch_size=16,
        seed=0,
        tta_swap=tta_swap,
    )


@pytest.mark.parametrize(("head", "tta_swap"), [("label_token", False), ("classifier", True)])
def test_fold_test_predictions_reuse_the_trained_model(tmp_path, monkeypatch, head, tta_swap):
    from transformers import AutoTokenizer

    frame, test_csv = synthetic_train(tmp_path, n_train=96, seed=0, n_test=24)
    base = tiny_base_for(
        frame, tmp_path, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=600
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = _config(head, tta_swap)
    dataset = tokenize_frame(frame, tokenizer, config.prompt, with_swap=True)
    test_ds = tokenize_frame(read_arena_csv(test_csv, "test").frame, tokenizer, config.prompt, with_swap=True)

    loads = []
    real_load = preference.load_backbone
    monkeypatch.setattr(preference, "load_backbone", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    result = fine_tune_fold(
        config,
        dataset.select(range(24, 96)),
        dataset.select(range(24)),
        tmp_path / "fold",
        name_or_path=base,
        test_ds=test_ds,
    )
    assert len(loads) == 1  # training and the test predictions share one base
    assert result.test_predictions == tmp_path / "fold" / TEST_PREDICTIONS_FILE
    saved = pd.read_parquet(result.test_predictions)
    assert saved["id"].tolist() == list(test_ds["id"])

    model, reloaded_tokenizer = preference.load_preference_model(config.model, result.adapter_dir, name_or_path=base)
    reference = predict_probabilities(
        model, test_ds, batch_size=16, tta_swap=tta_swap, pad_token_id=reloaded_tokenizer.pad_token_id
    )
    np.testing.assert_allclose(saved[list(LABEL_COLUMNS)].to_numpy(), reference, atol=1e-5)
