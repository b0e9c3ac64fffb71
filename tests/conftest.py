"""Shared fixtures: small, offline, session-scoped where building them costs time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything

# Real sample data, read-only and optional (tests skip without it); override the folder with ARENA_PREF_REAL_DATA.
REAL_TRAIN_CSV = Path(os.environ.get("ARENA_PREF_REAL_DATA", "/work/shared/data")) / "lmsys_train_210_truncated.csv"


@pytest.fixture(scope="session")
def synthetic_frames():
    """(train_df, test_df) in the raw Kaggle CSV format: 300 train rows, 60 test rows."""
    from pref_core.synthetic import make_synthetic_frames

    return make_synthetic_frames(n_train=300, n_test=60, signal=0.9, seed=0)


@pytest.fixture(scope="session")
def synthetic_csvs(tmp_path_factory):
    """(train_path, test_path) of the same synthetic data written as CSV files."""
    from pref_core.synthetic import write_synthetic_csvs

    return write_synthetic_csvs(tmp_path_factory.mktemp("synthetic"), n_train=300, n_test=60, signal=0.9, seed=0)


@pytest.fixture(scope="session")
def train_frame(synthetic_csvs):
    """The synthetic train CSV after ingest: list cells, int labels."""
    from pref_core.data import read_arena_csv

    return read_arena_csv(synthetic_csvs[0], "train").frame


@pytest.fixture(scope="session")
def tiny_tokenizer(train_frame):
    """A byte-level BPE tokenizer (vocab 1000) trained offline on the synthetic prompts."""
    from pref_core.prompts import build_prompt
    from pref_core.tiny import train_tokenizer

    texts = [build_prompt(p, a, b) for p, a, b in zip(train_frame.prompt, train_frame.response_a, train_frame.response_b)]
    return train_tokenizer(texts, vocab_size=1000)


@pytest.fixture
def real_train_csv() -> Path:
    """The 210-row real LMSYS sample (172 rows with cut JSON); skips when the file is absent."""
    if not REAL_TRAIN_CSV.is_file():
        pytest.skip(f"{REAL_TRAIN_CSV} not present")
    return REAL_TRAIN_CSV
