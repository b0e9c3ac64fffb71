"""One factory for the tests' tiny configs, tiny base models and fold data (imported by the test files).

- `tiny_config`: a RunConfig of a tiny CPU model built in code (model.tiny, fp32, all-linear LoRA);
- `tiny_recipe_config`: configs/tiny.yaml with a run's paths under a test's folder, for flow tests;
- `tiny_base` / `tiny_base_for`: a random tiny Llama with its tokenizer, from fixed texts or a frame's own texts;
- `tiny_fold_data`: synthetic rows through the real ingest and tokenizer, split into (train, val, base).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "configs" / "tiny.yaml"

# Enough text for a small byte-level BPE that keeps "a", "b" and "tie" whole.
TINY_TEXTS = [
    "<prompt>: which river is longest ? <response_a>: the nile is long <response_b>: the amazon carries more water",
    "Which is the better response for the prompt ? a or b or tie ? Answer: tie",
    "the cat sat on the mat and the dog ran to the garden while the sun was bright",
] * 20
# Training on CPU: plain AdamW, no mixed precision, no checkpoint within a short test fold.
CPU_TRAIN = {"optim": "adamw_torch", "mixed_precision": "no", "save_steps": 1000}


def tiny_config(
    head: str = "label_token",
    *,
    model: Optional[dict] = None,
    prompt: Optional[dict] = None,
    lora: Optional[dict] = None,
    distill: Optional[dict] = None,
    **train: Any,
):
    """RunConfig of a tiny CPU model: model.tiny with fp32 weights, LoRA r4/alpha8 on all linear layers without
    dropout. `model`, `prompt`, `lora`, `distill` update their sections; other keywords are train.* keys."""
    from pref_core.config.loading import parse_config

    raw: dict[str, Any] = {
        "model": {"tiny": {}, "head": head, "dtype": "fp32", **(model or {})},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", **(lora or {})},
        "train": dict(train),
    }
    if prompt is not None:
        raw["prompt"] = dict(prompt)
    if distill is not None:
        raw["distill"] = dict(distill)
    return parse_config(raw)


def tiny_recipe_config(
    tmp_path: Path,
    train_csv: Path,
    *extra: str,
    name: Optional[str] = None,
    test_csv: Optional[Path] = None,
    output: Optional[str] = None,
):
    """configs/tiny.yaml for a flow test: its data, outputs (tmp_path/<output or name or 'out'>) and SQLite
    tracking store under `tmp_path`; with `name`, also the experiment and registered model of that name.
    `extra` overrides come last."""
    from pref_core.config.loading import load_config

    overrides = [
        f"data.train_csv={train_csv}",
        f"output_dir={tmp_path / (output or name or 'out')}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    if name is not None:
        overrides += [f"tracking.experiment={name}", f"tracking.registered_model={name}"]
    if test_csv is not None:
        overrides.append(f"data.test_csv={test_csv}")
    return load_config(TINY_RECIPE, [*overrides, *extra])


def lora_model(config, tokenizer, base: Path):
    """pref_core.model.preference.build_model with the sections of `config` (model, lora, train.seed) over `base`."""
    from pref_core.model.preference import build_model

    return build_model(config.model, config.lora, tokenizer, name_or_path=base, seed=config.train.seed)


def tiny_base(
    folder: Path,
    texts=TINY_TEXTS,
    *,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    vocab_size: int = 400,
    **sizes: Any,
) -> Path:
    """A random tiny Llama and a tokenizer trained on `texts`, saved to `folder`."""
    from pref_core.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(
        texts, folder, hidden_size=hidden_size, intermediate_size=intermediate_size, vocab_size=vocab_size, **sizes
    )


def frame_texts(frame) -> list[str]:
    """The closing question and every non-empty turn of an ingested frame: a tokenizer trained on them reads
    the frame's prompts."""
    from pref_core.text.prompts import CLOSING_QUESTION

    return [CLOSING_QUESTION] + [
        t for c in ("prompt", "response_a", "response_b") for turns in frame[c] for t in turns if t
    ]


def synthetic_train(folder: Path, n_train: int, seed: int, n_test: int = 0):
    """(ingested train frame, test CSV path or None) of synthetic rows that all follow the marker rule."""
    from pref_core.data.arena import read_arena_csv
    from pref_core.data.synthetic import write_synthetic_csvs

    train_csv, test_csv = write_synthetic_csvs(folder / "data", n_train=n_train, n_test=n_test, signal=1.0, seed=seed)
    return read_arena_csv(train_csv, "train").frame, (test_csv if n_test else None)


def tiny_base_for(frame, folder: Path, **sizes: Any) -> Path:
    """A tiny base whose tokenizer is trained on `frame`'s own texts, saved to folder/tiny."""
    return tiny_base(folder / "tiny", frame_texts(frame), **sizes)


class FoldData(NamedTuple):
    train: Any  # datasets.Dataset
    val: Any
    base: Path


def tiny_fold_data(
    folder: Path, prompt_config, *, n_train: int, n_val: int, seed: int, with_swap: bool = True, **sizes: Any
) -> FoldData:
    """Synthetic rows (signal 1.0) through the real ingest and a tokenizer trained on them; the first `n_val`
    rows validate, the rest train. `sizes`: the tiny model's (hidden_size, num_layers, vocab_size, ...)."""
    from transformers import AutoTokenizer

    from pref_core.text.tokenization import tokenize_frame

    frame, _ = synthetic_train(folder, n_train, seed)
    base = tiny_base_for(frame, folder, **sizes)
    dataset = tokenize_frame(frame, AutoTokenizer.from_pretrained(base), prompt_config, with_swap=with_swap)
    return FoldData(dataset.select(range(n_val, n_train)), dataset.select(range(n_val)), base)
