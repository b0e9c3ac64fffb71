"""Fold-adapter averaging: the averaged adapter's weight delta is the exact mean of the fold deltas, its
classifier head the mean head, and it predicts like peft's own add_weighted_adapter(combination_type="cat")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

from pref_core.model.averaging import average_adapters
from pref_core.model.preference import CLASSIFIER_NAME, load_preference_ensemble
from pref_core.predict.inference import predict_token_ids
from tests.test_ensemble import make_config, make_fold_adapters, token_rows

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("head", ["label_token", "classifier"])
def test_averaged_adapter_delta_is_the_mean_of_the_fold_deltas(tiny_dir, tokenizer, tmp_path, head):
    config = make_config(head)
    folds = make_fold_adapters(config, tokenizer, tiny_dir, tmp_path, n_folds=3)
    averaged = average_adapters(folds, tmp_path / "average")
    model, _, names = load_preference_ensemble(config.model, [*folds, averaged], name_or_path=tiny_dir, device="cpu")
    *fold_names, average_name = names
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    with torch.no_grad():
        for layer in layers:
            mean_delta = torch.stack([layer.get_delta_weight(n) for n in fold_names]).mean(dim=0)
            torch.testing.assert_close(layer.get_delta_weight(average_name), mean_delta, atol=1e-6, rtol=1e-5)
            assert layer.lora_A[average_name].weight.shape[0] == 3 * config.lora.r
    if head == "classifier":
        wrapper = getattr(model.get_base_model(), CLASSIFIER_NAME)
        for part in ("weight", "bias"):
            mean = torch.stack([getattr(wrapper.modules_to_save[n], part) for n in fold_names]).mean(dim=0)
            torch.testing.assert_close(getattr(wrapper.modules_to_save[average_name], part), mean)


def test_averaged_adapter_predicts_like_peft_add_weighted_adapter_cat(tiny_dir, tokenizer, tmp_path):
    config = make_config("label_token")
    folds = make_fold_adapters(config, tokenizer, tiny_dir, tmp_path, n_folds=3)
    averaged = average_adapters(folds, tmp_path / "average")
    ids, _ = token_rows(tokenizer)
    model, tok, names = load_preference_ensemble(config.model, [*folds, averaged], name_or_path=tiny_dir, device="cpu")
    model.add_weighted_adapter(names[:3], [1 / 3] * 3, "peft_cat", combination_type="cat")
    model.set_adapter("peft_cat")
    theirs = predict_token_ids(model, ids, pad_token_id=tok.pad_token_id)
    model.set_adapter(names[3])
    ours = predict_token_ids(model, ids, pad_token_id=tok.pad_token_id)
    model.set_adapter(names[0])
    fold_0 = predict_token_ids(model, ids, pad_token_id=tok.pad_token_id)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    assert not np.allclose(ours, fold_0, atol=1e-3)


def test_averaging_refuses_folds_of_different_shapes(tiny_dir, tokenizer, tmp_path):
    a = make_fold_adapters(make_config("label_token"), tokenizer, tiny_dir, tmp_path / "a", n_folds=1)
    b = make_fold_adapters(make_config("classifier"), tokenizer, tiny_dir, tmp_path / "b", n_folds=1)
    with pytest.raises(ValueError, match="modules_to_save"):
        average_adapters([*a, *b], tmp_path / "average")
