"""Validated, cached input files, without Prefect: what the `ingest` task does, callable before Prefect is imported.

The CLI's preflight reads the train and test files here (a bad file fails in one line, in about a second, before
Prefect, MLflow or torch are imported); the flow's `ingest` task (arena_pref.tasks.preparation) calls the same
function and finds the cached result. The parsed rows are stored as parquet under
`output_dir/ingest/<data hash>/`, keyed by the file's content hash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from arena_pref.tasks import workspace
from pref_core.config.schema import RunConfig
from pref_core.data.arena import read_arena_csv, write_rejected
from pref_core.hashing import hash_file
from pref_core.publish import publishing_file

LOGGER = logging.getLogger(__name__)


@dataclass
class IngestOutput:
    kind: str
    source: str
    data_hash: str
    parsed_path: str
    rejected_path: Optional[str]
    n_read: int
    n_kept: int
    n_rejected: int
    reused: bool = False


def ingest_file(config: RunConfig, kind: str) -> IngestOutput:
    """Validate one Kaggle CSV (train or test) and store its parsed rows as parquet, keyed by the file's hash."""
    source = Path(config.data.train_csv if kind == "train" else config.data.test_csv)
    if not source.is_file():  # the reader's one-line file error (missing, a folder), before hashing the path
        read_arena_csv(source, kind=kind, max_bad_fraction=config.data.max_bad_fraction)
    data_hash = hash_file(source)
    folder = workspace.ingest_dir(config, data_hash)
    parsed_path, meta_path = folder / f"{kind}.parquet", folder / f"{kind}.json"
    rejected_path = folder / f"{kind}_rejected.csv"

    if meta_path.exists() and parsed_path.exists():
        meta = json.loads(meta_path.read_text())
        # The same file under a stricter policy must fail again, not reuse a lenient earlier result.
        if meta["n_rejected"] <= config.data.max_bad_fraction * meta["n_read"]:
            LOGGER.info("ingest %s: %s already validated (hash %s), reusing", kind, source, data_hash[:12])
            return IngestOutput(**{**meta, "source": str(source), "reused": True})

    result = read_arena_csv(source, kind=kind, max_bad_fraction=config.data.max_bad_fraction)
    with publishing_file(parsed_path) as staging:
        result.frame.to_parquet(staging, index=False)
    has_rejected = result.n_rejected > 0
    if has_rejected:
        write_rejected(result.rejected, rejected_path)
        LOGGER.warning(
            "ingest %s: %d of %d rows rejected (data.max_bad_fraction=%s); reasons in %s",
            kind,
            result.n_rejected,
            result.n_read,
            config.data.max_bad_fraction,
            rejected_path,
        )
    out = IngestOutput(
        kind=kind,
        source=str(source),
        data_hash=data_hash,
        parsed_path=str(parsed_path),
        rejected_path=str(rejected_path) if has_rejected else None,
        n_read=result.n_read,
        n_kept=result.n_kept,
        n_rejected=result.n_rejected,
    )
    meta_path.write_text(json.dumps({k: v for k, v in asdict(out).items() if k not in ("source", "reused")}))
    LOGGER.info("ingest %s: kept %d of %d rows from %s", kind, out.n_kept, out.n_read, source)
    return out
