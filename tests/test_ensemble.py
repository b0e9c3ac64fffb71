"""Fold ensemble over one base: K adapters switched in (LoRA and classifier head together), numerically
equal to reloading the base per fold; rows split over several worker devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pref_core.model.preference as modeling
from pref_core.config.loading import parse_config
from pref_core.model.preference import (
    CLASSIFIER_NAME,
    build_model,
    load_preference_ensemble,
    load_preference_model,
    save_adapter,
)
from pref_core.predict.ensemble import (
    average_probabilities,
    encode_frame,
    predict_fold_probabilities,
    predict_with_adapters,
    split_rows,
)
from pref_core.predict.inference import predict_token_ids
from tests.factories import TINY_TEXTS, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TEXTS = TINY_TEXTS


def make_config(head: str, tta_swap: bool = False):
    return tiny_config(head, model={"tiny": {"hidden_size": 32}}, seed=0, eval_batch_size=4, tta_swap=tta_swap)


def make_fold_adapters(config, tokenizer, tiny_dir, out, n_folds=3):
    """n_folds adapters with different, clearly non-zero trainable weights (LoRA B starts at zero)."""
    dirs = []
    for fold in range(n_folds):
        model = build_model(config.model, config.lora, tokenizer, name_or_path=tiny_dir, seed=config.train.seed)
        generator = torch.Generator().manual_seed(100 + fold)
        with torch.no_grad():
            for _, param in model.named_parameters():
                if param.requires_grad:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        dirs.append(save_adapter(model, out / f"fold_{fold}", tokenizer))
    return dirs


@pytest.fixture(scope="module", params=["label_token", "classifier"])
def folds(request, tiny_dir, tokenizer, tmp_path_factory):
    config = make_config(request.param)
    return config, make_fold_adapters(config, tokenizer, tiny_dir, tmp_path_factory.mktemp(request.param))


def token_rows(tokenizer, n=9):
    ids = [tokenizer.encode(TEXTS[i % 3])[: 8 + 3 * i] for i in range(n)]
    swapped = [list(reversed(seq)) for seq in ids]
    return ids, swapped


def per_fold_reload(config, adapter_dirs, tiny_dir, ids, swapped):
    """The reference: one base load per fold (what the ensemble did before)."""
    outputs = []
    for adapter_dir in adapter_dirs:
        model, tok = load_preference_model(config.model, adapter_dir, name_or_path=tiny_dir, device="cpu")
        outputs.append(
            predict_token_ids(
                model, ids, swapped if config.train.tta_swap else None, batch_size=4, pad_token_id=tok.pad_token_id
            )
        )
    return outputs


@pytest.mark.parametrize("tta_swap", [False, True])
def test_one_base_with_switched_adapters_equals_per_fold_reloads(folds, tiny_dir, tokenizer, tta_swap, monkeypatch):
    config, adapter_dirs = folds
    config = config.model_copy(update={"train": config.train.model_copy(update={"tta_swap": tta_swap})})
    ids, swapped = token_rows(tokenizer)
    reference = per_fold_reload(config, adapter_dirs, tiny_dir, ids, swapped)
    assert not np.allclose(reference[0], reference[1], atol=1e-3)  # the folds really differ

    loads = []
    real_load_backbone = modeling.load_backbone
    monkeypatch.setattr(modeling, "load_backbone", lambda *a, **k: loads.append(1) or real_load_backbone(*a, **k))
    probs = predict_with_adapters(
        config.model,
        adapter_dirs,
        {"input_ids": ids, "input_ids_swap": swapped},
        batch_size=config.train.eval_batch_size,
        tta_swap=config.train.tta_swap,
        base_model=str(tiny_dir),
    )
    assert len(loads) == 1  # one base for the K folds
    np.testing.assert_allclose(probs, average_probabilities(reference), atol=1e-5, rtol=0)

    per_fold, workers = predict_fold_probabilities(
        config.model,
        adapter_dirs,
        ids,
        swapped if tta_swap else None,
        batch_size=config.train.eval_batch_size,
        base_model=str(tiny_dir),
        devices=["cpu"],
    )
    for got, want in zip(per_fold, reference):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert [n for _, _, n in workers] == [len(ids) * (2 if tta_swap else 1)]  # rows run, each view counted


def test_classifier_head_switches_with_the_adapter(tiny_dir, tokenizer, tmp_path):
    config = make_config("classifier")
    adapter_dirs = make_fold_adapters(config, tokenizer, tiny_dir, tmp_path, n_folds=2)
    model, _, names = load_preference_ensemble(config.model, adapter_dirs, name_or_path=tiny_dir, device="cpu")
    saved = []
    for adapter_dir in adapter_dirs:
        weights = load_file(adapter_dir / "adapter_model.safetensors")
        [key] = [k for k in weights if f"{CLASSIFIER_NAME}.weight" in k]
        saved.append(weights[key])
    assert not torch.allclose(saved[0], saved[1])
    wrapper = getattr(model.get_base_model(), CLASSIFIER_NAME)  # peft ModulesToSaveWrapper
    for name, weight in zip(names, saved):
        model.set_adapter(name)
        assert wrapper.active_adapters == [name]
        torch.testing.assert_close(wrapper.modules_to_save[name].weight, weight)
        # The forward pass uses this adapter's head, not another's.
        hidden = torch.randn(2, 32)
        torch.testing.assert_close(wrapper(hidden), hidden @ weight.T + wrapper.modules_to_save[name].bias)


def test_split_rows_deals_longest_first_and_covers_every_row_once():
    lengths = [5, 50, 7, 40, 6, 30, 1]
    shares = split_rows(lengths, 2)
    assert sorted(np.concatenate(shares).tolist()) == list(range(7))
    assert [s.tolist() for s in shares] == [[1, 4, 5, 6], [0, 2, 3]]  # lengths 50, 30, 6, 1 | 40, 7, 5
    assert [s.tolist() for s in split_rows(lengths, 1)] == [list(range(7))]
    with pytest.raises(ValueError, match="n_parts"):
        split_rows(lengths, 0)


@pytest.mark.parametrize("tta_swap", [True, False])
def test_two_worker_devices_equal_one_device(tiny_dir, tokenizer, tmp_path, tta_swap):
    """Swap TTA on two devices: each worker reads one view over every row (the 1st place's way); without TTA they
    split the rows. Either way the probabilities equal the one-device run's within 1e-5."""
    config = make_config("classifier", tta_swap=tta_swap)
    adapter_dirs = make_fold_adapters(config, tokenizer, tiny_dir, tmp_path, n_folds=2)
    ids, swapped = token_rows(tokenizer, n=11)
    swapped = swapped if tta_swap else None
    one, _ = predict_fold_probabilities(
        config.model,
        adapter_dirs,
        ids,
        swapped,
        batch_size=config.train.eval_batch_size,
        base_model=str(tiny_dir),
        devices=["cpu"],
    )
    two, workers = predict_fold_probabilities(
        config.model,
        adapter_dirs,
        ids,
        swapped,
        batch_size=config.train.eval_batch_size,
        base_model=str(tiny_dir),
        devices=["cpu", "cpu"],
    )
    for got, want in zip(two, one):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert [device for device, _, _ in workers] == ["cpu", "cpu"]
    assert len({pid for _, pid, _ in workers}) == 2  # two worker processes
    rows_run = [n for _, _, n in workers]
    if tta_swap:
        assert rows_run == [11, 11]  # one view each, every row
    else:  # the batches are shared as the workers free up: who runs how many depends on timing
        assert sum(rows_run) == 11 and min(rows_run) > 0


def test_encode_frame_gives_the_token_cache_ids(train_frame, tiny_tokenizer):
    from pref_core.text.tokenization import tokenize_frame

    config = parse_config({"model": {"tiny": {"hidden_size": 32}}, "prompt": {"max_length": 96}})
    frame = train_frame.head(25)
    dataset = tokenize_frame(frame, tiny_tokenizer, config.prompt, with_swap=True, num_proc=1)
    ids, swapped = encode_frame(frame, tiny_tokenizer, config.prompt, with_swap=True, batch_rows=10)
    assert ids == [list(x) for x in dataset["input_ids"]]
    assert swapped == [list(x) for x in dataset["input_ids_swap"]]
    assert encode_frame(frame, tiny_tokenizer, config.prompt)[1] is None
