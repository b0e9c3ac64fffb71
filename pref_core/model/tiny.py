"""Tiny offline models for tests and the demo: a tokenizer trained on the fly and a 2-layer Llama.

Nothing here downloads anything: the tokenizer is learned from the given texts
and the model is randomly initialised from a small LlamaConfig, then both are
saved to a folder that loads back with ``HF_HUB_OFFLINE=1`` like any hub model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from pref_core.data.labels import TURN_COLUMNS
from pref_core.text.prompts import template_texts

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def tokenizer_corpus(frame: pd.DataFrame, limit: int = 5000) -> list[str]:
    """Texts the tiny tokenizer learns from: the prompt template's fixed text, then every non-empty turn of the
    first `limit` parsed rows (list-of-turns cells), column by column."""
    texts = template_texts()
    for column in TURN_COLUMNS:
        for turns in frame[column].head(limit):
            texts.extend(turn for turn in turns if turn)
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, extra_tokens: Iterable[str] = ("a", "b", "tie")):
    """Train a byte-level BPE fast tokenizer on `texts` and wrap it as a transformers tokenizer.

    `extra_tokens` are made frequent in the training stream so that BPE merges
    each of them into one token (the label_token head requires single-token
    labels). `add_tokens` would do it too, but added tokens also match inside
    words ("banana" -> b, a, n, a, ...), which would wreck the tokenization.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    core = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Byte-level BPE (as Llama-3 and GPT-2 use): any UTF-8 text encodes without <unk>, and decode round-trips.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts) + [" ".join(extra_tokens)] * 1000, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tokenizer.padding_side = "right"
    return tokenizer


def build_tiny_checkpoint(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    vocab_size: int = 2000,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, build a random tiny LlamaForCausalLM, save both to `out_dir`.

    Returns `out_dir`, usable as `model.name_or_path`. Deterministic for a seed.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # The label_token head reads frozen lm_head rows; at the usual init (std 0.02) their logit spread
    # caps how confident a LoRA-trained random model can get (OOF ~0.55 on the demo). std 0.1 lets
    # the tiny model express what it learned, like the wider-spread heads of real pretrained LMs.
    torch.nn.init.normal_(model.lm_head.weight, mean=0.0, std=0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
