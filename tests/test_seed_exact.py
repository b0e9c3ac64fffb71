"""template: seed + truncation: seed give the seed notebook's token ids, id for id.

The reference below is a straight transcription of the notebook's tokenize() (restated in
../shared/seed_tokenize.md), with json.loads instead of eval and JSON null read as "".
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pref_core.config.schema import PromptConfig
from pref_core.data.arena import read_arena_csv
from pref_core.text.prompts import PromptEncoder, explain_rows

ROOT = Path(__file__).resolve().parents[1]
SEED = PromptConfig(template="seed", truncation="seed", max_length=1024)


def seed_reference(tokenizer, prompt_cell: str, a_cell: str, b_cell: str, max_length: int = 1024) -> list[int]:
    """The seed notebook's ids for one row, from its raw JSON cells (its algorithm, transcribed)."""

    def enc(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt, response_a, response_b = (
        ["" if t is None else t for t in json.loads(c)] for c in (prompt_cell, a_cell, b_cell)
    )
    p = enc("<prompt>: " + " ".join(prompt))
    a = enc("\n\n<response_a>: " + " ".join(response_a))
    b = enc("\n\n<response_b>: " + " ".join(response_b))
    if len(p) + len(a) + len(b) > max_length:
        p = enc("<prompt>: " + prompt[-1])[:256]
        a = enc("\n\n<response_a>: " + response_a[-1])[:512]
        b = enc("\n\n<response_b>: " + response_b[-1])[:512]
    q = enc("\n\n---------\nWhich is the better response for the prompt ? a or b or tie ?\n\nAnswer: ")
    return [tokenizer.bos_token_id] + p + a + b + q


WORDS = [
    "zebra",
    "the",
    "über",
    "naïve",
    "日本語",
    "😀",
    "code",
    "\n",
    "  ",
    "?",
    "'s",
    "x" * 40,
    "!!",
    "\t",
    "42",
    "ß",
]


def generated_rows(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Raw JSON cells: 1-4 turns, JSON nulls, empty turns, unicode, whitespace, over-length texts."""
    rng = random.Random(seed)

    def turn():
        kind = rng.random()
        if kind < 0.1:
            return None
        if kind < 0.15:
            return ""
        length = rng.choice([1, 5, 30, 200, 900, 2500])  # words; 900+ push the row past 1024 tokens
        return " ".join(rng.choice(WORDS) for _ in range(length))

    rows = []
    for _ in range(n):
        n_turns = rng.choice([1, 1, 2, 3, 4])
        rows.append(
            tuple(json.dumps([turn() for _ in range(n_turns)], ensure_ascii=rng.random() < 0.5) for _ in range(3))
        )
    return rows


def frame_of(raw_rows) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(len(raw_rows))],
            "prompt": [json.loads(r[0]) for r in raw_rows],
            "response_a": [json.loads(r[1]) for r in raw_rows],
            "response_b": [json.loads(r[2]) for r in raw_rows],
        }
    )


@pytest.fixture(scope="module", params=["prefix_space", "no_prefix_space"])
def tokenizer(request, tiny_tokenizer):
    """The tiny byte-level BPE as trained (adds a prefix space) and as Llama-3 does (none)."""
    if request.param == "prefix_space":
        return tiny_tokenizer
    from tokenizers import pre_tokenizers

    other = copy.deepcopy(tiny_tokenizer)
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return other


@pytest.mark.parametrize("max_length", [1024, 256])
def test_generated_rows_id_for_id(tokenizer, max_length):
    raw = generated_rows(100, seed=max_length)
    config = SEED.model_copy(update={"max_length": max_length})
    explained = explain_rows(tokenizer, frame_of(raw), config, "classifier", ("a", "b", "tie"))
    expected = [seed_reference(tokenizer, *r, max_length=max_length) for r in raw]
    mismatched = [i for i, (row, ref) in enumerate(zip(explained, expected)) if row["input_ids"] != ref]
    assert not mismatched, f"rows {mismatched[:10]} differ from the seed's ids"
    # The set covers what it must: multi-turn, nulls, over-length rows beyond max_length (no second check).
    assert any(len(json.loads(r[0])) > 1 for r in raw) and any("null" in r[1] for r in raw)
    assert any(len(ids) > max_length for ids in expected)
    assert any(row["n_tokens_untruncated"] > row["n_tokens"] for row in explained)
    assert max(len(ids) for ids in expected) <= 256 + 512 + 512 + 40


def test_swapped_view_is_the_seed_on_the_swapped_row(tokenizer):
    raw = generated_rows(60, seed=7)
    rows = list(zip(*(frame_of(raw)[c] for c in ("prompt", "response_a", "response_b"))))
    _, swapped = PromptEncoder(tokenizer, SEED).encode_batch_with_swap(rows)
    assert swapped == [seed_reference(tokenizer, p, b, a) for p, a, b in raw]


def test_real_rows_id_for_id(tokenizer, real_train_csv):
    raw = pd.read_csv(real_train_csv, dtype=str, keep_default_na=False)
    parsed = read_arena_csv(real_train_csv, "train", max_bad_fraction=1.0).frame
    assert len(parsed) > 0
    explained = {
        r["id"]: r["input_ids"] for r in explain_rows(tokenizer, parsed, SEED, "classifier", ("a", "b", "tie"))
    }
    raw = raw[raw["id"].isin(explained)]
    assert len(raw) == len(parsed)
    for row in raw.itertuples(index=False):
        assert explained[row.id] == seed_reference(tokenizer, row.prompt, row.response_a, row.response_b), row.id


@pytest.mark.slow
def test_show_prompt_cli_gives_the_seeds_ids(tmp_path):
    """`arena-pref show-prompt --json` with the tiny config (tokenizer built from the train texts) on
    generated rows, against the reference with the same tokenizer; an unknown id is one line, exit 2."""
    from transformers import AutoTokenizer

    from pref_core.data.labels import LABEL_COLUMNS

    raw = generated_rows(40, seed=3)
    train = pd.DataFrame(
        {
            "id": [str(1000 + i) for i in range(len(raw))],
            "prompt": [r[0] for r in raw],
            "response_a": [r[1] for r in raw],
            "response_b": [r[2] for r in raw],
        }
    )
    for k, column in enumerate(LABEL_COLUMNS):
        train[column] = [int(i % 3 == k) for i in range(len(raw))]
    csv = tmp_path / "train.csv"
    train.to_csv(csv, index=False)
    base = [
        sys.executable,
        "-m",
        "arena_pref.cli",
        "show-prompt",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--set",
        "prompt.truncation=seed",
        "--set",
        f"data.train_csv={csv}",
        "--set",
        f"output_dir={tmp_path / 'out'}",
    ]
    ids = list(train["id"])
    done = subprocess.run(
        base + [a for i in ids for a in ("--id", i)] + ["--json"], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert [r["id"] for r in shown] == ids
    (model_dir,) = (tmp_path / "out" / "models").iterdir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for row, cells in zip(shown, raw):
        assert row["input_ids"] == seed_reference(tokenizer, *cells, max_length=256)
        assert row["head_position"] == len(row["input_ids"]) - 1
        assert [i for s in row["segments"] for i in s["ids"]] == row["input_ids"]
        assert list(row["label_token_ids"]) == list(LABEL_COLUMNS)

    bad = subprocess.run(base + ["--id", "no-such-row"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no-such-row" in bad.stderr
