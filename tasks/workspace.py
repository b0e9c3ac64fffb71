"""Where each step writes under `output_dir`, derived from the config and the data, never from globals.

output_dir/
  ingest/<data_hash>/            parsed rows (parquet) and rejected rows, per input file
  models/tiny-<key>/             the offline tiny base model, when model.tiny is set
  cache/tokens/<key>/            tokenized datasets (pref_core.text.tokenization)
  runs/<run_key>/                one CV configuration: folds table, fold_<k>/ checkpoints and adapters,
                                 oof_predictions.parquet, submission.csv

`run_key` (pref_core.config.run_key) hashes the resolved config, less its result-neutral
fields, and the data hashes, so reruns of the same setup find their finished folds
and concurrent runs of different setups never share a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from pref_core.config.schema import RunConfig
from pref_core.hashing import hash_json

# A GPU worker may keep its caches and checkpoints in a scratch folder of its own (set by
# `arena-pref stack` or the work pool's job variables); results travel through MLflow anyway.
OUTPUT_DIR_ENV = "ARENA_PREF_OUTPUT_DIR"


def output_root(config: RunConfig) -> Path:
    return Path(os.environ.get(OUTPUT_DIR_ENV) or config.output_dir).expanduser().resolve()


def ingest_dir(config: RunConfig, data_hash: str) -> Path:
    return output_root(config) / "ingest" / data_hash


def token_cache_root(config: RunConfig) -> Path:
    return output_root(config) / "cache" / "tokens"


def tiny_model_dir(config: RunConfig, train_hash: str) -> Path:
    assert config.model.tiny is not None
    return output_root(config) / "models" / f"tiny-{hash_json([config.model.tiny.model_dump(), train_hash])}"


def run_dir(config: RunConfig, run_key: str) -> Path:
    return output_root(config) / "runs" / run_key


def fold_dir(config: RunConfig, run_key: str, fold: int) -> Path:
    return run_dir(config, run_key) / f"fold_{fold}"
