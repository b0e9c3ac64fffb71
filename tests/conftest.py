"""Shared fixtures: small, offline, session-scoped where building them costs time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arena_pref import environment

# Quiet, no stray MLflow runs opened by the Trainer (arena_pref.environment), and offline: tests build their
# models in memory or from packages, never from the Hub (the product itself never sets HF_HUB_OFFLINE).
environment.apply_defaults(*environment.PRODUCT, environment.NO_PROGRESS_BARS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Prefect's console log handler keeps the sys.stderr it finds when its logging is first set up;
# setting it up here binds it to the session's stream, not to a test's capsys buffer that closes.
from prefect.logging.configuration import ensure_logging_setup  # noqa: E402

ensure_logging_setup()

# Real sample data, read-only and optional (tests skip without it): ../shared/data beside the
# project root; override the folder with ARENA_PREF_REAL_DATA.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_TRAIN_CSV = Path(os.environ.get("ARENA_PREF_REAL_DATA", _SHARED_DATA)) / "lmsys_train_210_truncated.csv"


@pytest.fixture(scope="session")
def synthetic_frames():
    """(train_df, test_df) in the raw Kaggle CSV format: 300 train rows, 60 test rows."""
    from pref_core.data.synthetic import make_synthetic_frames

    return make_synthetic_frames(n_train=300, n_test=60, signal=0.9, seed=0)


@pytest.fixture(scope="session")
def synthetic_csvs(tmp_path_factory):
    """(train_path, test_path) of the same synthetic data written as CSV files."""
    from pref_core.data.synthetic import write_synthetic_csvs

    return write_synthetic_csvs(tmp_path_factory.mktemp("synthetic"), n_train=300, n_test=60, signal=0.9, seed=0)


@pytest.fixture(scope="session")
def train_frame(synthetic_csvs):
    """The synthetic train CSV after ingest: list cells, int labels."""
    from pref_core.data.arena import read_arena_csv

    return read_arena_csv(synthetic_csvs[0], "train").frame


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny offline Llama base folder (tests.factories.tiny_base), one per test module."""
    from tests.factories import tiny_base

    return tiny_base(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    """The tokenizer saved with `tiny_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(train_frame):
    """A byte-level BPE tokenizer (vocab 1000) trained offline on the synthetic prompts."""
    from pref_core.model.tiny import train_tokenizer
    from pref_core.text.prompts import build_prompt

    texts = [
        build_prompt(p, a, b) for p, a, b in zip(train_frame.prompt, train_frame.response_a, train_frame.response_b)
    ]
    return train_tokenizer(texts, vocab_size=1000)


@pytest.fixture
def real_train_csv() -> Path:
    """The 210-row real LMSYS sample (172 rows with cut JSON); skips when the file is absent."""
    if not REAL_TRAIN_CSV.is_file():
        pytest.skip(f"{REAL_TRAIN_CSV} not present")
    return REAL_TRAIN_CSV


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: with 2 OpenMP threads a fold of the tiny model ran 4 s
    alone but 35-70 s while another process used the CPU; with 1 thread it stays at 6-8 s either way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (own SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):  # a loaded 2-core machine needs >60 s
        yield


def pytest_sessionfinish(session, exitstatus):
    """Fail the session when a project module was imported under two names (e.g. `tasks.x` and
    `arena_pref.tasks.x`): two copies of one module, whose exceptions miss each other's `except` clauses."""
    import sys

    from tests.imports import duplicate_module_names

    duplicates = duplicate_module_names(sys.modules)
    if duplicates:
        print(f"\nproject modules imported under two names: {duplicates}", file=sys.stderr)
        session.exitstatus = 1
