"""Cross-validation folds grouped by prompt and stratified by label.

The same prompt appears in many rows (users ask the same question of several
model pairs); folds stratified by label only put those rows on both sides of
a split and inflate the validation score. Grouping by the canonical JSON of
the prompt turns (case-folded, whitespace collapsed) keeps every prompt in one fold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pref_core.data import parse_turns

FOLD_COLUMNS = ("id", "fold")


def prompt_group_key(turns) -> str:
    """Canonical text of a prompt cell: equal prompts give equal keys however the JSON was spaced, and
    prompts that differ only in letter case or whitespace (the commonest near-duplicates) too."""
    if isinstance(turns, str):
        turns = parse_turns(turns)
    normalised = [None if t is None else " ".join(t.split()).casefold() for t in turns]
    return json.dumps(normalised, ensure_ascii=False, separators=(",", ":"))


def make_folds(frame: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Assign each row a fold 0..n_folds-1; returns a frame (id, fold) in the frame's row order.

    sklearn StratifiedGroupKFold(shuffle=True, random_state=seed): groups are
    prompts, strata the ``label`` column. Deterministic for a seed.
    """
    missing = [c for c in ("id", "prompt", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"make_folds: the frame lacks column(s) {missing}; pass the frame of data.read_arena_csv")
    if n_folds < 2:
        raise ValueError(f"cv.n_folds: got {n_folds}; need at least 2 folds")
    groups, uniques = pd.factorize(frame["prompt"].map(prompt_group_key))
    if len(uniques) < n_folds:
        raise ValueError(
            f"cv.n_folds={n_folds} but the data has only {len(uniques)} distinct prompts; "
            f"lower cv.n_folds to at most {len(uniques)} or add rows"
        )
    labels = frame["label"].to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(frame), -1, dtype=np.int64)
    for k, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(frame)), labels, groups)):
        fold[valid_idx] = k
    return pd.DataFrame({"id": frame["id"].astype(str).to_numpy(), "fold": fold})


def save_folds(folds: pd.DataFrame, path: Union[str, Path]) -> Path:
    """Write the (id, fold) table as .parquet or .csv (by the file's suffix)."""
    path = Path(path)
    _check_columns(folds, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        folds[list(FOLD_COLUMNS)].to_parquet(path, index=False)
    elif path.suffix == ".csv":
        folds[list(FOLD_COLUMNS)].to_csv(path, index=False)
    else:
        raise ValueError(f"{path}: use a .parquet or .csv file name for folds")
    return path


def load_folds(path: Union[str, Path]) -> pd.DataFrame:
    """Read a table written by `save_folds`; ids stay strings, folds are int64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folds file {path} not found; create it with pref_core.folds.save_folds")
    if path.suffix == ".parquet":
        folds = pd.read_parquet(path)
    elif path.suffix == ".csv":
        folds = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    else:
        raise ValueError(f"{path}: folds are read from .parquet or .csv files")
    _check_columns(folds, path)
    return pd.DataFrame({"id": folds["id"].astype(str).to_numpy(), "fold": folds["fold"].astype("int64").to_numpy()})


def _check_columns(folds: pd.DataFrame, path: Path) -> None:
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise ValueError(f"{path}: a folds table needs columns {list(FOLD_COLUMNS)}, missing {missing}")
