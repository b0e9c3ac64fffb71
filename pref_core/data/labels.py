"""The arena columns and the three preference classes, defined once for the whole project.

Every module that needs the column names (turns, models, labels), the label
order or the a/b exchange imports them from here (the 2nd-place LMSYS code
defined them three times and paid for it in subtle column-order bugs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pandas is only needed for the type hints here
    import pandas as pd

# The cells that hold JSON lists of turns, in the order a prompt template reads them.
TURN_COLUMNS: tuple[str, str, str] = ("prompt", "response_a", "response_b")
MODEL_COLUMNS: tuple[str, str] = ("model_a", "model_b")

# Order matters: column k of every (n, 3) probability matrix is LABEL_COLUMNS[k].
LABEL_COLUMNS: tuple[str, str, str] = ("winner_model_a", "winner_model_b", "winner_tie")
ALL_LABELS_COLUMN = "+".join(LABEL_COLUMNS)  # the `column` of a problem about the three labels together
LABEL_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABEL_COLUMNS)}
INDEX_A, INDEX_B, INDEX_TIE = 0, 1, 2
NUM_CLASSES = len(LABEL_COLUMNS)

# Exchanging responses a and b maps class a <-> b and keeps tie: new[:, k] = old[:, SWAP_PERMUTATION[k]].
SWAP_PERMUTATION: tuple[int, int, int] = (INDEX_B, INDEX_A, INDEX_TIE)

# Pairs of columns that `swap` exchanges (when present in the frame).
_SWAP_COLUMN_PAIRS: tuple[tuple[str, str], ...] = (
    (TURN_COLUMNS[1], TURN_COLUMNS[2]),
    MODEL_COLUMNS,
    (LABEL_COLUMNS[INDEX_A], LABEL_COLUMNS[INDEX_B]),
)


def swap_label_index(label: int) -> int:
    """Class index after exchanging responses a and b (a <-> b, tie stays)."""
    return SWAP_PERMUTATION[label]


def swap_probabilities(probs):
    """Exchange the a and b columns of an (n, 3) array or tensor of probabilities/logits."""
    return probs[..., list(SWAP_PERMUTATION)]


def swap(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Return a copy of an arena frame with sides a and b exchanged consistently.

    Responses, model names, one-hot label columns and the integer ``label``
    column (when present) all move together, so a swapped row still says the
    same thing about which answer people preferred.
    """
    out = frame.copy()
    for left, right in _SWAP_COLUMN_PAIRS:
        if left in frame.columns and right in frame.columns:
            out[left] = frame[right].to_numpy()
            out[right] = frame[left].to_numpy()
    if "label" in frame.columns:
        out["label"] = frame["label"].map(lambda v: swap_label_index(int(v))).astype(frame["label"].dtype)
    return out


def get_label_token_ids(tokenizer, label_tokens: Sequence[str]) -> list[int]:
    """Token ids of the three label words (``a``, ``b``, ``tie`` by default), in LABEL_COLUMNS order.

    The label-token head reads the next-token logits of exactly these ids, so
    each label must be one token of the tokenizer; anything else would silently
    score a prefix of the word.
    """
    if len(label_tokens) != NUM_CLASSES:
        raise ValueError(
            f"model.label_tokens must hold {NUM_CLASSES} strings (for {', '.join(LABEL_COLUMNS)}), "
            f"got {len(label_tokens)}: {list(label_tokens)!r}"
        )
    ids: list[int] = []
    for column, word in zip(LABEL_COLUMNS, label_tokens):
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"model.label_tokens: label {word!r} (for {column}) is {len(encoded)} tokens "
                f"{encoded} with this tokenizer, but the label_token head needs exactly one. "
                "Choose a word the tokenizer keeps whole (for example ' A'/' B'/' tie' or 'a'/'b'/'tie'), "
                "or set model.head=classifier."
            )
        ids.append(int(encoded[0]))
    if len(set(ids)) != NUM_CLASSES:
        raise ValueError(
            f"model.label_tokens {list(label_tokens)!r} map to repeated token ids {ids}; they must differ."
        )
    return ids
