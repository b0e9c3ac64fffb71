"""Batched prediction: dynamic padding, original order restored, a/b swap TTA, probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn

from pref_core.config.loading import parse_config
from pref_core.data.labels import INDEX_A, INDEX_B, INDEX_TIE, NUM_CLASSES
from pref_core.model.preference import build_model
from pref_core.model.tiny import build_tiny_checkpoint
from pref_core.predict.inference import PreferenceCollator, predict_probabilities

pytestmark = pytest.mark.filterwarnings(
    # torch's own torch.utils.mkldnn uses the deprecated decorator; it is imported lazily by transformers/peft.
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

TEXTS = ["the cat sat on the mat", "a dog ran to the river and back again", "tie or not", "b wins over a"] * 10


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A LoRA model with random (non-zero) adapters, so predictions differ from row to row."""
    from transformers import AutoTokenizer

    folder = build_tiny_checkpoint(
        TEXTS, tmp_path_factory.mktemp("tiny"), hidden_size=32, intermediate_size=64, vocab_size=300
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = parse_config({"model": {"tiny": {}, "dtype": "fp32"}, "lora": {"r": 4, "dropout": 0.0}})
    model = build_model(config.model, config.lora, tokenizer, name_or_path=folder, seed=config.train.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model, tokenizer


def token_dataset(sequences, labels=None, swapped=None):
    columns = {
        "id": [f"row{i}" for i in range(len(sequences))],
        "input_ids": sequences,
        "length": [len(s) for s in sequences],
        "label": labels if labels is not None else [-1] * len(sequences),
    }
    if swapped is not None:
        columns.update(input_ids_swap=swapped, length_swap=[len(s) for s in swapped])
    return Dataset.from_dict(columns)


# -- collator -------------------------------------------------------------------------------------------------------


def test_collator_pads_to_the_longest_row_on_the_right():
    batch = PreferenceCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": [8], "label": 2}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 2]


def test_collator_rounds_up_to_a_multiple_and_drops_test_labels():
    collate = PreferenceCollator(pad_token_id=9, pad_to_multiple_of=8, input_column="input_ids_swap")
    batch = collate([{"input_ids_swap": list(range(1, 10)), "label": -1}, {"input_ids_swap": [3], "label": -1}])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum(dim=1).tolist() == [9, 1]
    assert "labels" not in batch  # test rows carry -1: no loss to compute


# -- order, padding, probabilities ----------------------------------------------------------------------------------


def test_predict_restores_the_original_order(tiny_model):
    model, tokenizer = tiny_model
    rng = np.random.default_rng(0)
    sequences = [tokenizer.encode(" ".join(rng.choice(TEXTS, size=int(rng.integers(1, 5))))) for _ in range(13)]
    dataset = token_dataset(sequences)

    batched = predict_probabilities(model, dataset, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():  # reference: one unpadded row at a time, in dataset order
        expected = np.concatenate(
            [torch.softmax(model(input_ids=torch.tensor([s]))["logits"], -1).numpy() for s in sequences]
        )
    assert batched.shape == (13, NUM_CLASSES)
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-6)
    assert np.ptp(batched[:, 0]) > 1e-3, "rows should differ, or the order check proves nothing"


def test_predict_progress_bar_and_training_mode(tiny_model):
    model, tokenizer = tiny_model
    dataset = token_dataset([tokenizer.encode(t) for t in TEXTS[:5]])
    model.train()
    quiet = predict_probabilities(model, dataset, batch_size=2)
    loud = predict_probabilities(model, dataset, batch_size=5, progress=True)  # pad id defaults to the model's own
    np.testing.assert_allclose(quiet, loud, atol=1e-5)
    assert model.training, "predict must leave the model in the mode it found it"


def test_predict_empty_dataset():
    assert predict_probabilities(nn.Linear(1, 1), token_dataset([])).shape == (0, NUM_CLASSES)


# -- TTA ------------------------------------------------------------------------------------------------------------


class FirstTokenModel(nn.Module):
    """Logits are a fixed row per first token: predictions we can work out by hand."""

    def __init__(self, table: dict[int, list[float]]):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(max(table) + 1, NUM_CLASSES), requires_grad=False)
        for token, row in table.items():
            self.logits.data[token] = torch.tensor(row)

    def forward(self, input_ids, attention_mask=None, labels=None):
        return {"loss": None, "logits": self.logits[input_ids[:, 0]]}


def test_tta_swap_averages_the_swapped_view_with_columns_exchanged():
    # Token 1 means "a wins" strongly; token 2 means "b wins" mildly; token 3 is uninformative.
    model = FirstTokenModel({1: [3.0, 0.0, 0.0], 2: [0.0, 1.0, 0.0], 3: [0.0, 0.0, 0.0]})
    dataset = token_dataset([[1, 7], [3], [2, 2, 2]], swapped=[[2, 7], [3], [1, 2, 2]])
    softmax = lambda row: np.exp(row) / np.exp(row).sum()  # noqa: E731

    plain = predict_probabilities(model, dataset, batch_size=2, pad_token_id=0)
    tta = predict_probabilities(model, dataset, batch_size=2, pad_token_id=0, tta_swap=True)

    # Row 0: original says a (token 1); the swapped view says its b (token 2), i.e. original a.
    swapped_back = softmax(np.array([0.0, 1.0, 0.0]))[[INDEX_B, INDEX_A, INDEX_TIE]]
    np.testing.assert_allclose(tta[0], (softmax(np.array([3.0, 0.0, 0.0])) + swapped_back) / 2, atol=1e-6)
    assert tta[0, INDEX_A] < plain[0, INDEX_A]  # the milder swapped view pulls the confident one back
    # Row 1: a symmetric view: TTA changes nothing.
    np.testing.assert_allclose(tta[1], [1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    # Row 2: token 2 (mild b) and, swapped, token 1 (strong a for the swapped a = original b).
    expected = (softmax(np.array([0.0, 1.0, 0.0])) + softmax(np.array([3.0, 0.0, 0.0]))[[1, 0, 2]]) / 2
    np.testing.assert_allclose(tta[2], expected, atol=1e-6)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-6)


def test_tta_swap_is_a_no_op_for_a_swap_consistent_model(tiny_model):
    """When the swapped view is the same row, TTA must return the plain prediction with a and b averaged."""
    model, tokenizer = tiny_model
    sequences = [tokenizer.encode(t) for t in TEXTS[:4]]
    plain = predict_probabilities(model, token_dataset(sequences), batch_size=3)
    tta = predict_probabilities(model, token_dataset(sequences, swapped=sequences), batch_size=3, tta_swap=True)
    expected = (plain + plain[:, [INDEX_B, INDEX_A, INDEX_TIE]]) / 2
    np.testing.assert_allclose(tta, expected, atol=1e-5)
    np.testing.assert_allclose(tta[:, INDEX_A], tta[:, INDEX_B], atol=1e-6)


def test_tta_swap_without_swapped_ids_says_how_to_fix():
    with pytest.raises(ValueError, match="input_ids_swap.*train.tta_swap"):
        predict_probabilities(FirstTokenModel({1: [0.0, 0.0, 0.0]}), token_dataset([[1]]), tta_swap=True)
