"""Label definitions: swapping a and b twice is the identity; swapped labels say the same thing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pref_core.data.labels import (
    LABEL_COLUMNS,
    SWAP_PERMUTATION,
    get_label_token_ids,
    swap,
    swap_label_index,
    swap_probabilities,
)


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "id": ["1", "2", "3"],
            "model_a": ["m1", "m2", "m3"],
            "model_b": ["n1", "n2", "n3"],
            "prompt": [["p1"], ["p2"], ["p3"]],
            "response_a": [["a1"], ["a2"], [None]],
            "response_b": [["b1"], ["b2"], ["b3"]],
            "winner_model_a": [1, 0, 0],
            "winner_model_b": [0, 1, 0],
            "winner_tie": [0, 0, 1],
            "label": [0, 1, 2],
        }
    )


def test_label_columns_order():
    assert LABEL_COLUMNS == ("winner_model_a", "winner_model_b", "winner_tie")
    assert [swap_label_index(k) for k in range(3)] == [1, 0, 2]


def test_swap_twice_is_identity(frame):
    assert swap(swap(frame)).equals(frame)


def test_swapped_rows_say_the_same_thing(frame):
    swapped = swap(frame)
    assert swapped["response_a"].tolist() == [["b1"], ["b2"], ["b3"]]
    assert swapped["response_b"].tolist() == [["a1"], ["a2"], [None]]
    assert swapped["model_a"].tolist() == ["n1", "n2", "n3"]
    assert swapped["winner_model_a"].tolist() == [0, 1, 0]
    assert swapped["winner_model_b"].tolist() == [1, 0, 0]
    assert swapped["winner_tie"].tolist() == [0, 0, 1]
    assert swapped["label"].tolist() == [1, 0, 2]
    assert swapped["prompt"].tolist() == frame["prompt"].tolist()
    assert frame["response_a"].tolist() == [["a1"], ["a2"], [None]]  # the input is not changed


def test_swap_without_optional_columns():
    frame = pd.DataFrame({"id": ["1"], "prompt": [["p"]], "response_a": [["a"]], "response_b": [["b"]]})
    assert swap(frame)["response_a"].tolist() == [["b"]]


def test_swap_probabilities():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    assert np.allclose(swap_probabilities(probs), [[0.3, 0.6, 0.1], [0.5, 0.2, 0.3]])
    assert np.allclose(swap_probabilities(swap_probabilities(probs)), probs)
    assert SWAP_PERMUTATION == (1, 0, 2)


def test_label_token_ids(tiny_tokenizer):
    ids = get_label_token_ids(tiny_tokenizer, ("a", "b", "tie"))
    assert len(set(ids)) == 3
    assert [tiny_tokenizer.decode([i]).strip() for i in ids] == ["a", "b", "tie"]


def test_label_token_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="model.label_tokens must hold 3 strings"):
        get_label_token_ids(tiny_tokenizer, ("a", "b"))
    with pytest.raises(ValueError, match=r"label 'xyzzyplugh' \(for winner_tie\) is \d+ tokens"):
        get_label_token_ids(tiny_tokenizer, ("a", "b", "xyzzyplugh"))
    with pytest.raises(ValueError, match="repeated token ids"):
        get_label_token_ids(tiny_tokenizer, ("a", "a", "tie"))
