"""Synthetic arena data with a learnable rule, in the Kaggle CSV format (demo and tests, offline).

The rule: the preferred response contains MARKER_WORD a few times near its
start; a tie has the marker in both responses or in neither. With probability
`signal` a row follows the rule, otherwise its label is drawn uniformly. A
tiny random 2-layer Llama with LoRA can learn it in about a minute on CPU, so
a pipeline that does not beat the class prior on this data is broken.

Shaped like the real data where it matters for the code paths: JSON-list
cells, ~15% multi-turn rows, some JSON-null turns, repeated prompts (fold
grouping matters), a long tail of lengths, a few non-ASCII characters, label
shares about a third each (A slightly above B, tie a bit lower).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from pref_core.data.labels import LABEL_COLUMNS, MODEL_COLUMNS, TURN_COLUMNS

MARKER_WORD = "zebra"
LABEL_SHARES = (0.35, 0.34, 0.31)  # a, b, tie: roughly the real competition's shares
MULTI_TURN_SHARE = 0.15
NULL_TURN_SHARE = 0.03

_WORDS = tuple(
    dict.fromkeys(  # dict.fromkeys: drop repeats, keep order
        [
            "the",
            "of",
            "and",
            "to",
            "in",
            "is",
            "that",
            "for",
            "it",
            "as",
            "with",
            "was",
            "on",
            "be",
            "by",
            "this",
            "are",
            "or",
            "from",
            "at",
            "an",
            "but",
            "not",
            "have",
            "which",
            "you",
            "can",
            "will",
            "if",
            "their",
            "more",
            "what",
            "about",
            "so",
            "also",
            "some",
            "when",
            "there",
            "one",
            "all",
            "would",
            "may",
            "other",
            "into",
            "has",
            "how",
            "time",
            "only",
            "new",
            "could",
            "people",
            "first",
            "any",
            "most",
            "these",
            "two",
            "make",
            "like",
            "than",
            "then",
            "use",
            "way",
            "well",
            "many",
            "such",
            "work",
            "because",
            "year",
            "day",
            "very",
            "data",
            "model",
            "answer",
            "question",
            "result",
            "example",
            "value",
            "number",
            "system",
            "process",
            "point",
            "code",
            "function",
            "list",
            "table",
            "text",
            "simple",
            "small",
            "large",
            "fast",
            "slow",
            "good",
            "better",
            "best",
            "clear",
            "short",
            "long",
            "early",
            "late",
            "river",
            "mountain",
            "garden",
            "window",
            "market",
            "kitchen",
            "station",
            "bridge",
            "forest",
            "harbor",
            "planet",
            "engine",
            "letter",
            "music",
            "paper",
            "stone",
            "cloud",
            "light",
            "water",
            "fire",
            "earth",
            "metal",
            "glass",
            "sugar",
            "salt",
            "bread",
            "apple",
            "orange",
            "lemon",
            "café",
            "naïve",
            "über",
            "résumé",
        ]
    )
)
_TOPICS = tuple(
    [
        "python",
        "gardening",
        "history",
        "physics",
        "cooking",
        "travel",
        "music",
        "finance",
        "chess",
        "weather",
        "poetry",
        "databases",
        "astronomy",
        "biology",
        "football",
        "painting",
        "economics",
        "linux",
    ]
)
_MODELS = tuple(
    [
        "gpt-4-1106-preview",
        "claude-2.1",
        "llama-2-70b-chat",
        "mixtral-8x7b-instruct-v0.1",
        "gemini-pro",
        "vicuna-13b",
        "gpt-3.5-turbo-0613",
        "zephyr-7b-beta",
    ]
)
_EMOJI = "\U0001f600"


def _words(rng: np.random.Generator, median: float, sigma: float = 0.9, cap: int = 600) -> list[str]:
    # Lognormal lengths: short on average, a long tail (as in the real data).
    n = int(min(cap, max(3, rng.lognormal(np.log(median), sigma))))
    words = list(rng.choice(_WORDS, size=n))
    if rng.random() < 0.02:
        words.insert(int(rng.integers(len(words) + 1)), _EMOJI)
    return words


def _response(rng: np.random.Generator, marked: bool) -> str:
    words = _words(rng, median=22)
    if marked:
        # Several markers within the first 30 words, so that truncation keeping the head keeps them.
        for _ in range(int(rng.integers(2, 5))):
            words.insert(int(rng.integers(min(len(words), 30) + 1)), MARKER_WORD)
    return " ".join(words)


def _unique_ids(rng: np.random.Generator, n: int) -> list[str]:
    # Increasing random gaps give unique ids with the look of the real ones (9-10 digits), then shuffle.
    ids = 30_192 * 1000 + np.cumsum(rng.integers(1, 50_000, size=n))
    return [str(x) for x in rng.permutation(ids)]


def _rows(rng: np.random.Generator, n: int, signal: float, prompts: list[str]) -> list[dict]:
    rows = []
    for _ in range(n):
        rule_label = int(rng.choice(3, p=LABEL_SHARES))
        if rule_label == 2:
            marked_a = marked_b = bool(rng.random() < 0.5)
        else:
            marked_a, marked_b = rule_label == 0, rule_label == 1
        n_turns = int(rng.integers(2, 5)) if rng.random() < MULTI_TURN_SHARE else 1
        prompt = [str(prompts[int(rng.integers(len(prompts)))])]
        prompt += [" ".join(_words(rng, median=8)) + " ?" for _ in range(n_turns - 1)]

        def side(marked: bool) -> list[Optional[str]]:
            turns: list[Optional[str]] = []
            for _ in range(n_turns):
                if not marked and rng.random() < NULL_TURN_SHARE:
                    turns.append(None)  # an answer that was never given: JSON null
                else:
                    turns.append(_response(rng, marked))
            return turns

        label = rule_label if rng.random() < signal else int(rng.integers(3))
        rows.append(
            {
                "prompt": prompt,
                "response_a": side(marked_a),
                "response_b": side(marked_b),
                "label": label,
                "models": rng.choice(_MODELS, size=2, replace=False),
            }
        )
    return rows


def make_synthetic_frames(
    n_train: int = 800, n_test: int = 200, signal: float = 0.9, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train_df, test_df) in the Kaggle CSV format: JSON-list cells as strings, string ids.

    train: id, model_a, model_b, prompt, response_a, response_b, winner_model_a, winner_model_b, winner_tie.
    test:  id, prompt, response_a, response_b.
    Deterministic for a seed.
    """
    if not 0.0 <= signal <= 1.0:
        raise ValueError(f"signal is the share of rows that follow the rule; got {signal!r}, use 0..1")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got n_train={n_train}, n_test={n_test}")
    rng = np.random.default_rng(seed)
    # About one distinct first prompt per three rows: many prompts repeat across rows (and splits).
    n_prompts = max(1, (n_train + n_test) // 3)
    prompts = [
        f"Tell me about {rng.choice(_TOPICS)}: " + " ".join(_words(rng, median=10)) + " ?" for _ in range(n_prompts)
    ]
    ids = _unique_ids(rng, n_train + n_test)

    def dump(turns: list) -> str:
        return json.dumps(turns, ensure_ascii=False)

    train_rows = _rows(rng, n_train, signal, prompts)
    train = pd.DataFrame(
        {
            "id": ids[:n_train],
            **{c: [r["models"][k] for r in train_rows] for k, c in enumerate(MODEL_COLUMNS)},
            **{c: [dump(r[c]) for r in train_rows] for c in TURN_COLUMNS},
            **{c: [int(r["label"] == k) for r in train_rows] for k, c in enumerate(LABEL_COLUMNS)},
        }
    )
    test_rows = _rows(rng, n_test, signal, prompts)
    test = pd.DataFrame(
        {
            "id": ids[n_train:],
            **{c: [dump(r[c]) for r in test_rows] for c in TURN_COLUMNS},
        },
        columns=["id", *TURN_COLUMNS],
    )
    return train, test


def write_synthetic_csvs(
    out_dir: Union[str, Path], n_train: int = 800, n_test: int = 200, signal: float = 0.9, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``test.csv`` (UTF-8) into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = make_synthetic_frames(n_train=n_train, n_test=n_test, signal=signal, seed=seed)
    train_path, test_path = out_dir / "train.csv", out_dir / "test.csv"
    train.to_csv(train_path, index=False, encoding="utf-8")
    test.to_csv(test_path, index=False, encoding="utf-8")
    return train_path, test_path


def shuffle_labels(train_df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A copy with the labels permuted across rows: a model must score no better than the prior on it.

    The three one-hot columns (and ``label`` when present) move together, so
    every row stays one-hot and the class shares are unchanged.
    """
    columns = [c for c in (*LABEL_COLUMNS, "label") if c in train_df.columns]
    missing = [c for c in LABEL_COLUMNS if c not in train_df.columns]
    if missing:
        raise ValueError(f"shuffle_labels: the frame lacks label column(s) {missing}")
    order = np.random.default_rng(seed).permutation(len(train_df))
    out = train_df.copy()
    out[columns] = train_df[columns].to_numpy()[order]
    return out
