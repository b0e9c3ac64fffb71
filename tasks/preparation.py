"""Tasks that turn the configured files into cached, model-ready inputs.

Every task is idempotent and keyed by content hashes, so a fold worker that
re-runs them on its own machine gets the same result (or a cache hit) without
any shared disk.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from arena_pref.tasks import workspace
from arena_pref.tasks.intake import IngestOutput, ingest_file
from arena_pref.tasks.retry import retry_on_io
from pref_core.config.schema import RunConfig
from pref_core.data.arena import write_rejected
from pref_core.data.folds import make_folds
from pref_core.hashing import hash_file, hash_json
from pref_core.model.tiny import build_tiny_checkpoint, tokenizer_corpus
from pref_core.progress import console_note
from pref_core.publish import publishing_dir, publishing_file
from pref_core.text import tokenization

LOGGER = logging.getLogger(__name__)

# Tasks take the config and return small records of paths: no caching of their
# inputs by Prefect (the content-hash caches below are the source of truth).
TASK_DEFAULTS = dict(cache_policy=NO_CACHE, persist_result=False)


@dataclass
class TokenCacheOutput:
    path: str
    key: str
    hit: bool
    n_rows: int
    tokenizer_hash: str


@dataclass
class PreparedInputs:
    """Everything a fold needs, as paths (the same on any machine once the preparation tasks ran there)."""

    run_key: str
    base_model: str
    tokenizer_hash: str
    train: IngestOutput
    train_tokens: TokenCacheOutput
    folds_path: str
    test: Optional[IngestOutput] = None
    test_tokens: Optional[TokenCacheOutput] = None
    extra: Optional[IngestOutput] = None  # extra training rows (data.extra_csvs / data.extra_pairs)
    extra_tokens: Optional[TokenCacheOutput] = None
    unlabeled: Optional[IngestOutput] = None  # rows to pseudo-label (data.unlabeled_csvs / data.unlabeled_pairs)
    unlabeled_tokens: Optional[TokenCacheOutput] = None

    @property
    def train_hash(self) -> str:
        return self.train.data_hash

    @property
    def test_hash(self) -> Optional[str]:
        return self.test.data_hash if self.test else None

    def counts(self) -> dict[str, int]:
        out = {
            "n_train_read": self.train.n_read,
            "n_train_kept": self.train.n_kept,
            "n_train_rejected": self.train.n_rejected,
        }
        if self.test:
            out.update(n_test_read=self.test.n_read, n_test_kept=self.test.n_kept, n_test_rejected=self.test.n_rejected)
        if self.extra:
            out.update(
                n_extra_read=self.extra.n_read,
                n_extra_kept=self.extra.n_kept,
                n_extra_rejected_or_duplicate=self.extra.n_rejected,
            )
        if self.unlabeled:
            out.update(n_unlabeled_read=self.unlabeled.n_read, n_unlabeled_used=self.unlabeled.n_kept)
        return out

    def rejected_files(self) -> list[str]:
        return [i.rejected_path for i in (self.train, self.test, self.extra) if i is not None and i.rejected_path]


def _atomic_write_parquet(frame: pd.DataFrame, dest: Path) -> None:
    with publishing_file(dest) as staging:
        frame.to_parquet(staging, index=False)


@task(name="ingest", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io, **TASK_DEFAULTS)
def ingest(config: RunConfig, kind: str) -> IngestOutput:
    """Validate one Kaggle CSV (train or test) and store its parsed rows as parquet, keyed by the file's hash
    (arena_pref.tasks.intake, which the CLI's preflight calls before Prefect is imported)."""
    return ingest_file(config, kind)


@task(name="ingest-extra", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io, **TASK_DEFAULTS)
def ingest_extra(config: RunConfig, train: IngestOutput) -> Optional[IngestOutput]:
    """Extra training rows from data.extra_csvs and data.extra_pairs, deduplicated against the main data by prompt.

    The result counts as one more input file: keyed by the hashes of every source, the main data
    and the side-assignment seed.
    """
    from pref_core.data.extra import read_extra_sources

    sources = [*config.data.extra_csvs, *config.data.extra_pairs]
    if not sources:
        return None
    hashes = [hash_file(p) for p in sources]
    key = hash_json([hashes, train.data_hash, config.data.extra_seed, config.data.max_bad_fraction])
    folder = workspace.ingest_dir(config, f"extra-{key}")
    parsed_path, meta_path, rejected_path = (
        folder / "extra.parquet",
        folder / "extra.json",
        folder / "extra_rejected.csv",
    )
    if meta_path.exists() and parsed_path.exists():
        LOGGER.info("ingest extra: %d sources already prepared (key %s), reusing", len(sources), key)
        return IngestOutput(**{**json.loads(meta_path.read_text()), "reused": True})

    main = pd.read_parquet(train.parsed_path, columns=["prompt"])
    result, counts = read_extra_sources(
        config.data.extra_csvs, config.data.extra_pairs, main, config.data.extra_seed, config.data.max_bad_fraction
    )
    _atomic_write_parquet(result.frame, parsed_path)
    if len(result.rejected):
        write_rejected(result.rejected, rejected_path)
    LOGGER.info("ingest extra: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    out = IngestOutput(
        kind="extra",
        source=";".join(str(p) for p in sources),
        data_hash=f"extra-{key}",
        parsed_path=str(parsed_path),
        rejected_path=str(rejected_path) if len(result.rejected) else None,
        n_read=result.n_read,
        n_kept=result.n_kept,
        n_rejected=result.n_rejected,
    )
    meta_path.write_text(json.dumps({k: v for k, v in asdict(out).items() if k != "reused"}))
    return out


@task(name="prepare-base-model", **TASK_DEFAULTS)
def prepare_base_model(config: RunConfig, train: IngestOutput) -> str:
    """The base model's location: the configured hub id/folder, a GGUF package converted once, or the
    tiny model built (once) from the train texts."""
    if config.model.gguf is not None:
        from pref_core.model.gguf import convert_gguf, find_package_file

        source = find_package_file(config.model.gguf.package, config.model.gguf.file)
        target = (
            workspace.output_root(config) / "models" / f"gguf-{hash_json([str(source.name), source.stat().st_size])}"
        )
        if not (target / "config.json").exists():
            LOGGER.info("converting %s to a Hugging Face folder at %s (once)", source, target)
        return str(convert_gguf(source, target))
    if config.model.tiny is None:
        # A Hub id becomes its cache snapshot (downloaded here once): folds load from disk, never the network.
        from pref_core.model.source import download_base_model

        return download_base_model(str(config.model.name_or_path), config.model.revision)
    target = workspace.tiny_model_dir(config, train.data_hash)
    if (target / "config.json").exists():
        LOGGER.info("tiny base model already built at %s", target)
        return str(target)
    frame = pd.read_parquet(train.parsed_path)
    # Built beside the target and renamed, so concurrent fold processes never see half a model.
    with publishing_dir(target) as staging:
        tiny = config.model.tiny
        build_tiny_checkpoint(
            tokenizer_corpus(frame),
            staging,
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            vocab_size=tiny.vocab_size,
            seed=tiny.seed,
        )
    LOGGER.info("built tiny base model at %s", target)
    return str(target)


# Not log_prints (the flow's): datasets' fingerprinting finds a mapped function's globals by capturing dill's
# dis.dis output from sys.stdout, which Prefect's print-to-log patch steals (the bytecode landed in the run's log and
# the capture came back empty).
@task(name="tokenize-and-cache", log_prints=False, **TASK_DEFAULTS)
def tokenize_and_cache(config: RunConfig, ingested: IngestOutput, base_model: str, with_swap: bool) -> TokenCacheOutput:
    tokenizer = tokenization.load_tokenizer(base_model, config.model.revision)
    frame = pd.read_parquet(ingested.parsed_path)
    started = time.monotonic()
    result = tokenization.build_token_cache(
        frame,
        tokenizer,
        config.prompt,
        workspace.token_cache_root(config),
        data_hash=ingested.data_hash,
        with_swap=with_swap,
    )
    if not result.hit:
        console_note(f"tokenize {ingested.kind}: {result.n_rows} rows in {time.monotonic() - started:.1f} s")
    if config.train.eval_max_batch_tokens is not None:  # before any fold trains, not when it predicts
        check_eval_token_budget(config, result.path)
    LOGGER.info(
        "tokenize %s: %s (%d rows, key %s)",
        ingested.kind,
        "cache hit" if result.hit else "built",
        result.n_rows,
        result.key,
    )
    return TokenCacheOutput(
        path=str(result.path),
        key=result.key,
        hit=result.hit,
        n_rows=result.n_rows,
        tokenizer_hash=tokenization.hash_tokenizer(tokenizer),
    )


def check_eval_token_budget(config: RunConfig, cache_path) -> None:
    """train.eval_max_batch_tokens holds the longest row of the token cache (either view), or TokenBudgetError."""
    import torch

    from pref_core.predict.batching import check_token_budget

    dataset = tokenization.load_token_cache(cache_path)
    pad_to_multiple_of = 8 if torch.cuda.is_available() else None  # as pref_core.train.trainer.resolve_padding
    for column in ("length", "length_swap"):
        if column in dataset.column_names:
            check_token_budget(
                dataset[column],
                config.train.eval_max_batch_tokens,
                pad_to_multiple_of,
                dataset["id"],
                option="train.eval_max_batch_tokens",
                length_option="prompt.max_length",
            )


@task(name="make-folds", **TASK_DEFAULTS)
def write_fold_table(config: RunConfig, train: IngestOutput, run_key: str) -> str:
    """Grouped, stratified K-fold table (id -> fold), deterministic for cv.seed."""
    dest = workspace.run_dir(config, run_key) / "folds.parquet"
    if dest.exists():
        return str(dest)
    frame = pd.read_parquet(train.parsed_path)
    table = make_folds(frame, n_folds=config.cv.n_folds, seed=config.cv.seed)
    _atomic_write_parquet(table, dest)
    return str(dest)
