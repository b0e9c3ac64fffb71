"""Batched tokenization of an arena frame into a `datasets.Dataset`, and an on-disk cache of it.

The cache key covers everything the token ids depend on (data, tokenizer
content, template, max_length, truncation, swap, FORMAT_VERSION), so a changed
input can never silently reuse stale ids; an unchanged one never re-tokenizes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from pref_core.config.schema import PromptConfig
from pref_core.data.labels import TURN_COLUMNS
from pref_core.publish import publishing_dir
from pref_core.text.prompts import PromptEncoder

# Bump whenever prompts.py or this module change the ids produced for the same inputs:
# it is part of every cache key, so old caches are simply not found any more.
FORMAT_VERSION = 2  # 2: seed template joins turns by " ", nulls read "", seed policy id-exact

# Above this many rows, on machines with at least PARALLEL_MIN_CORES cores, `tokenize_frame` runs
# one worker process per core by default. With fewer cores one process is faster: the Rust
# tokenizer already spreads each batch over all cores, while `datasets` turns that off in workers
# (measured on 2 cores, 10k rows: 6.5 s in-process vs 9.9 s with 2 workers).
PARALLEL_MIN_ROWS = 5000
PARALLEL_MIN_CORES = 4
_MAP_BATCH_SIZE = 1000
_META_FILE = "arena_pref_cache.json"


def load_tokenizer(name_or_path: Union[str, Path], revision: Optional[str] = None):
    """The base model's tokenizer, with a pad token (Llama 3 ships none; padded positions are masked anyway)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class CacheResult:
    path: Path
    key: str
    hit: bool  # True: found on disk, nothing was tokenized
    n_rows: int


def hash_tokenizer(tokenizer) -> str:
    """Content hash of a tokenizer: backend JSON (vocab, merges, normalizer, added tokens), specials, class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = backend.to_str()
    else:  # a slow tokenizer: its vocabulary is what decides the ids
        content = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    specials = {
        "map": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
    }
    digest = hashlib.sha256()
    for part in (type(tokenizer).__name__, json.dumps(specials, sort_keys=True), content):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def compute_cache_key(data_hash: str, tokenizer_hash: str, prompt_config: PromptConfig, with_swap: bool) -> str:
    """Folder name of a token cache: a hash of every input that changes the token ids."""
    fields = {
        "data": data_hash,
        "tokenizer": tokenizer_hash,
        "prompt": prompt_config.model_dump(mode="json"),  # template, max_length, truncation (and any new field)
        "with_swap": bool(with_swap),
        "format_version": FORMAT_VERSION,
    }
    return "tok-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def default_num_proc(n_rows: int, cores: Optional[int] = None) -> int:
    """All usable cores for large inputs on machines with PARALLEL_MIN_CORES+ cores, else 1.

    Small inputs stay in-process: worker start-up would cost more than it saves.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_rows <= PARALLEL_MIN_ROWS or cores < PARALLEL_MIN_CORES:
        return 1
    return cores


class _Tokenize:
    """The `datasets.map` function; a class so it pickles to workers and builds its encoder once per process."""

    def __init__(self, tokenizer, prompt_config: PromptConfig, with_swap: bool):
        self.tokenizer = tokenizer
        self.prompt_config = prompt_config
        self.with_swap = with_swap
        self._encoder: Optional[PromptEncoder] = None

    def __getstate__(self):
        return {**self.__dict__, "_encoder": None}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self._encoder is None:
            self._encoder = PromptEncoder(self.tokenizer, self.prompt_config)
        rows = list(zip(*(batch[c] for c in TURN_COLUMNS)))
        # The swapped view reuses the pieces' token ids (equal to encoding labels.swap(frame); tested).
        ids, ids_swap = self._encoder.encode_batch_with_swap(rows, with_swap=self.with_swap)
        out = {"input_ids": ids, "length": [len(x) for x in ids]}
        if ids_swap is not None:
            out.update(input_ids_swap=ids_swap, length_swap=[len(x) for x in ids_swap])
        return out


def tokenize_frame(
    frame: pd.DataFrame,
    tokenizer,
    prompt_config: PromptConfig,
    with_swap: bool = False,
    num_proc: Optional[int] = None,
):
    """Tokenize an ingested arena frame (see data.read_arena_csv) into a `datasets.Dataset`.

    Columns: ``id`` (str), ``input_ids`` (list[int]), ``length`` (int),
    ``label`` (int, -1 for test rows) and, when `with_swap`, ``input_ids_swap``
    / ``length_swap`` with responses a and b exchanged. ``label`` is *not*
    swapped: use labels.swap_label_index for the swapped view.
    `num_proc`: worker processes (default: `default_num_proc`, all cores for large inputs on 4+ cores).
    """
    import datasets

    missing = [c for c in ("id", *TURN_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"tokenize_frame: the frame lacks column(s) {missing}; pass the frame of data.read_arena_csv")
    features, order = _output_features(with_swap)
    if len(frame) == 0:  # map() skips empty datasets and would leave the output columns out
        return datasets.Dataset.from_dict({c: [] for c in order}, features=features)
    num_proc = default_num_proc(len(frame)) if num_proc is None else num_proc
    num_proc = max(1, min(num_proc, len(frame)))
    dataset = _source_dataset(frame).map(
        _Tokenize(tokenizer, prompt_config, with_swap),
        batched=True,
        batch_size=_MAP_BATCH_SIZE,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=list(TURN_COLUMNS),
        features=features,
        desc="tokenizing",
    )
    return dataset.select_columns(order)


def _source_dataset(frame: pd.DataFrame):
    """The frame's ids, turn lists and labels (-1 for test rows) as a `datasets.Dataset`."""
    import datasets

    labels = frame["label"].astype("int64").tolist() if "label" in frame.columns else [-1] * len(frame)
    return datasets.Dataset.from_dict(
        {"id": frame["id"].astype(str).tolist(), **{c: frame[c].tolist() for c in TURN_COLUMNS}, "label": labels},
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                **{c: datasets.List(datasets.Value("string")) for c in TURN_COLUMNS},
                "label": datasets.Value("int64"),
            }
        ),
    )


def _output_features(with_swap: bool):
    """(features, column order) of a tokenized dataset."""
    import datasets

    ids, length = datasets.List(datasets.Value("int32")), datasets.Value("int32")
    features = {"id": datasets.Value("string"), "label": datasets.Value("int64"), "input_ids": ids, "length": length}
    if with_swap:
        features.update(input_ids_swap=ids, length_swap=length)
    order = ["id", "input_ids", "length", "label"] + (["input_ids_swap", "length_swap"] if with_swap else [])
    return datasets.Features(features), order


def hash_ids(ids) -> str:
    """sha256 of the row ids in order; a cache built for other rows must not be reused."""
    digest = hashlib.sha256()
    for row_id in ids:
        digest.update(str(row_id).encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def build_token_cache(
    frame: pd.DataFrame,
    tokenizer,
    prompt_config: PromptConfig,
    cache_root: Union[str, Path],
    *,
    data_hash: str,
    with_swap: bool = False,
    num_proc: Optional[int] = None,
) -> CacheResult:
    """Tokenize `frame` into ``cache_root/<key>`` unless that cache exists already.

    `data_hash` must identify the frame's rows (e.g. pref_core.hashing.hash_file of the CSV
    plus anything that filters rows). The dataset is written to a temporary
    folder beside the target and renamed into place in one step, so a reader
    never sees half a cache; when two processes build the same key, the later
    rename fails and its copy is discarded (the contents are identical).
    """
    cache_root = Path(cache_root)
    key = compute_cache_key(data_hash, hash_tokenizer(tokenizer), prompt_config, with_swap)
    target = cache_root / key
    ids_hash = hash_ids(frame["id"])
    if target.is_dir():
        meta = _read_meta(target)
        _check_rows(meta, ids_hash, target)
        return CacheResult(path=target, key=key, hit=True, n_rows=int(meta["n_rows"]))

    with publishing_dir(target, prefix=f".{key}.tmp-") as tmp:
        dataset = tokenize_frame(frame, tokenizer, prompt_config, with_swap=with_swap, num_proc=num_proc)
        dataset.save_to_disk(str(tmp))
        meta = {
            "key": key,
            "n_rows": len(dataset),
            "ids_sha256": ids_hash,
            "data_hash": data_hash,
            "prompt": prompt_config.model_dump(mode="json"),
            "with_swap": with_swap,
            "format_version": FORMAT_VERSION,
        }
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return CacheResult(path=target, key=key, hit=False, n_rows=meta["n_rows"])


def load_token_cache(path: Union[str, Path]):
    """Load a cache folder written by `build_token_cache` (memory-mapped, nothing is re-tokenized)."""
    import datasets

    path = Path(path)
    if not (path / _META_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a token cache (no {_META_FILE}); "
            "build it with pref_core.text.tokenization.build_token_cache"
        )
    return datasets.load_from_disk(str(path))


def _read_meta(path: Path) -> dict:
    try:
        return json.loads((path / _META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RuntimeError(
            f"token cache {path} is damaged ({err}); delete that folder and run again to rebuild it"
        ) from None


def _check_rows(meta: dict, ids_hash: str, path: Path) -> None:
    if meta.get("ids_sha256") != ids_hash:
        raise ValueError(
            f"token cache {path} was built for other rows than this frame although the data hash matches; "
            "data_hash must identify the frame's rows (include anything that filters them, such as "
            "data.max_bad_fraction), or delete that folder"
        )
