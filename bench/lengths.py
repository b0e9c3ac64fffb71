"""Realistic example lengths, anchored on the real LMSYS rows, and arena frames of those lengths.

The 210-row real sample (/work/shared/data/lmsys_train_210_truncated.csv) has its text cells cut to
512 characters, but its ``prompt_length`` / ``response_a_length`` / ``response_b_length`` columns hold
the lengths of the *uncut* cells (they equal the cell length wherever a cell is shorter than 512).
Those are resampled with a multiplicative jitter (a smoothed bootstrap: 210 distinct values repeated
into 50k rows would form exact ties that flatter any length grouping).

No Llama-3 tokenizer is available offline, so character lengths become token lengths through
CHARS_PER_TOKEN (an assumption: ~4 characters per Llama-3 token on this mostly English mix of prose
and code), and the seed truncation policy of pref_core.text.prompts (caps 256/512/512, scaled to the budget
left by the template) caps each row at max_length. Multi-turn rows are treated as one turn, which
slightly overstates the length of long multi-turn rows (the seed policy keeps only the last turn).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

REAL_TRAIN_CSV = Path(os.environ.get("ARENA_PREF_REAL_DATA", "/work/shared/data")) / "lmsys_train_210_truncated.csv"
LENGTH_COLUMNS = ("prompt_length", "response_a_length", "response_b_length")
CHARS_PER_TOKEN = 4.0
# Tokens of the seed template around the content (BOS, three headers, closing question) with Llama-3's
# tokenizer, estimated by hand: 1 + ~4 + ~6 + ~6 + ~25.
TEMPLATE_TOKENS = 42
# Fallback when the real sample is absent, fitted to the README facts (median row ~2,400 characters,
# a long tail past 30k): lognormal per part (median chars, sigma).
_FALLBACK_PARTS = ((100, 1.4), (1100, 1.0), (1100, 1.0))
_JITTER_SIGMA = 0.15  # multiplicative jitter of the smoothed bootstrap (about +-15%)
_MAX_CELL_CHARS = 40_000


def load_char_lengths(path: Optional[Path] = None) -> tuple[np.ndarray, str]:
    """(n, 3) uncut character lengths of prompt / response_a / response_b, and where they came from.

    From the real sample when present, else drawn from the README-fitted fallback (500 rows).
    """
    path = Path(path) if path is not None else REAL_TRAIN_CSV
    if path.is_file():
        frame = pd.read_csv(path, usecols=list(LENGTH_COLUMNS))
        return frame[list(LENGTH_COLUMNS)].to_numpy(dtype=np.int64), str(path)
    rng = np.random.default_rng(0)
    parts = [rng.lognormal(np.log(m), s, size=500) for m, s in _FALLBACK_PARTS]
    return np.clip(np.stack(parts, axis=1), 2, _MAX_CELL_CHARS).astype(np.int64), "README-fitted lognormal fallback"


def sample_char_lengths(n: int, seed: int = 0, source: Optional[np.ndarray] = None) -> np.ndarray:
    """(n, 3) character lengths: rows of `source` (default: load_char_lengths) drawn with replacement,
    each part scaled by exp(N(0, 0.15)) so that resampled rows do not tie exactly."""
    if source is None:
        source, _ = load_char_lengths()
    rng = np.random.default_rng(seed)
    rows = source[rng.integers(0, len(source), size=n)].astype(np.float64)  # (n, 3)
    rows *= np.exp(rng.normal(0.0, _JITTER_SIGMA, size=rows.shape))
    return np.clip(np.rint(rows), 2, _MAX_CELL_CHARS).astype(np.int64)


def estimate_token_lengths(
    char_lengths: np.ndarray, max_length: int = 1024, chars_per_token: float = CHARS_PER_TOKEN
) -> np.ndarray:
    """(n,) token length of each row after the seed truncation policy, for a Llama-3-like tokenizer.

    Mirrors pref_core.text.prompts.PromptEncoder._fit for one turn: the whole row when it fits, else each
    part cut to its seed cap (pref_core.text.truncation.scale_seed_caps of the budget left by the template).
    """
    from pref_core.text.truncation import scale_seed_caps

    parts = np.maximum(1, np.ceil(char_lengths / chars_per_token)).astype(np.int64)  # (n, 3) tokens
    budget = max_length - TEMPLATE_TOKENS
    caps = np.asarray(scale_seed_caps(budget), dtype=np.int64)  # (3,)
    whole = parts.sum(axis=1)
    cut = np.minimum(parts, caps).sum(axis=1)
    return (TEMPLATE_TOKENS + np.where(whole <= budget, whole, cut)).astype(np.int64)


def sample_token_lengths(
    n: int, max_length: int = 1024, seed: int = 0, chars_per_token: float = CHARS_PER_TOKEN
) -> np.ndarray:
    """(n,) realistic token lengths (see the module docstring)."""
    return estimate_token_lengths(sample_char_lengths(n, seed), max_length, chars_per_token)


def make_word_corpus(n_chars: int = 4_000_000, seed: int = 0) -> str:
    """A long text of English-looking words (pref_core.data.synthetic's vocabulary) to cut cells from."""
    from pref_core.data.synthetic import _WORDS  # the synthetic data's word list: same look as the demo data

    rng = np.random.default_rng(seed)
    words = np.asarray(_WORDS)
    n_words = n_chars // 5
    picks = words[rng.integers(0, len(words), size=n_words)]
    # Sentence breaks and some digits, so that BPE sees more than single words.
    text = " ".join(picks.tolist())
    return text.replace(" the ", ". The ").replace(" data ", " data 42 ")


def make_realistic_frame(n: int, seed: int = 0, corpus: Optional[str] = None) -> pd.DataFrame:
    """An ingested-format arena frame (id, prompt/response_a/response_b as one-turn lists, label) with
    cells of realistic character lengths cut from a word corpus."""
    corpus = corpus or make_word_corpus(seed=seed)
    lengths = sample_char_lengths(n, seed=seed)  # (n, 3)
    rng = np.random.default_rng(seed + 1)
    span = len(corpus) - _MAX_CELL_CHARS - 1
    starts = rng.integers(0, span, size=lengths.shape)
    cells = [[[corpus[s : s + m]] for s, m in zip(starts[:, k], lengths[:, k])] for k in range(3)]
    return pd.DataFrame(
        {
            "id": [str(10_000_000 + i) for i in range(n)],
            "prompt": cells[0],
            "response_a": cells[1],
            "response_b": cells[2],
            "label": rng.integers(0, 3, size=n),
        }
    )
