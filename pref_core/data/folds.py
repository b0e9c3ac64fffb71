"""Cross-validation folds grouped by prompt and stratified by label.

The same prompt appears in many rows (users ask the same question of several
model pairs); folds stratified by label only put those rows on both sides of
a split and inflate the validation score. Grouping by the canonical JSON of
the prompt turns (case-folded, whitespace collapsed) keeps every prompt in one fold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from pref_core.data.arena import parse_turns
from pref_core.errors import UserError

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
    from sklearn.model_selection import StratifiedGroupKFold  # here: importing sklearn takes seconds

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
        raise FileNotFoundError(f"folds file {path} not found; create it with pref_core.data.folds.save_folds")
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


# A class under this share of the rows leaves folds with (almost) none of it to learn or score.
MIN_CLASS_SHARE = 0.05
# Fewer validation rows than this per fold make a fold's log loss mostly noise.
MIN_VALIDATION_ROWS = 20


class SplitError(UserError, ValueError):
    """The kept rows cannot be split into the configured grouped, stratified folds; the message says how to fix it."""


def check_splittable(frame: pd.DataFrame, n_folds: int) -> list[str]:
    """Check, before any work, that `frame` (id, prompt, label) splits into `n_folds` prompt-grouped folds.

    Raises SplitError (one line, with a fix that can work) when it cannot; returns one-line warnings
    for a split that works but scores poorly: a class missing or under MIN_CLASS_SHARE of the rows, a
    class with fewer rows than folds, or folds whose validation sets hold under MIN_VALIDATION_ROWS rows.
    """
    from pref_core.data.labels import LABEL_COLUMNS

    n_rows = len(frame)
    n_groups = int(frame["prompt"].map(prompt_group_key).nunique()) if n_rows else 0
    if n_groups < n_folds:
        # cv.n_folds below 2 is no split at all: only more prompts can fix a file with fewer than 2.
        fix = f"add rows with at least {n_folds} distinct prompts"
        if n_groups >= 2:
            fix += f" or set --set cv.n_folds={n_groups}"
        shared = f"{n_rows} rows share {n_groups} distinct prompt{'s' if n_groups != 1 else ''}"
        raise SplitError(
            f"data.train_csv: {shared}, too few for cv.n_folds={n_folds} folds grouped by prompt "
            f"(a prompt never sits on both sides of a split); {fix}"
        )
    warnings = []
    counts = np.bincount(frame["label"].to_numpy(dtype=np.int64), minlength=len(LABEL_COLUMNS))
    missing = [LABEL_COLUMNS[k] for k, c in enumerate(counts) if c == 0]
    rare = [
        f"{LABEL_COLUMNS[k]} ({c} of {n_rows} rows)" for k, c in enumerate(counts) if 0 < c < MIN_CLASS_SHARE * n_rows
    ]
    few = [
        f"{LABEL_COLUMNS[k]} ({c})" for k, c in enumerate(counts) if 0 < c < n_folds and c >= MIN_CLASS_SHARE * n_rows
    ]
    if missing:
        warnings.append(
            f"data.train_csv: no row is labelled {', '.join(missing)}; the model never learns "
            f"{'that class' if len(missing) == 1 else 'those classes'} and the OOF score flatters it"
        )
    if rare:
        warnings.append(
            f"data.train_csv: rare class{'es' if len(rare) > 1 else ''} under "
            f"{MIN_CLASS_SHARE:.0%} of rows: {', '.join(rare)}"
        )
    if few:
        warnings.append(
            f"data.train_csv: fewer rows than cv.n_folds={n_folds} for {', '.join(few)}; "
            "some folds validate without that class"
        )
    per_fold = n_rows // n_folds
    if per_fold < MIN_VALIDATION_ROWS:
        warnings.append(
            f"data.train_csv: {n_rows} rows give about {per_fold} validation rows per fold "
            f"(cv.n_folds={n_folds}); fold scores under {MIN_VALIDATION_ROWS} rows are mostly noise"
        )
    return warnings


def check_fold_classes(frame: pd.DataFrame, n_folds: int, seed: int, folds: Optional[Sequence[int]] = None) -> None:
    """Refuse (SplitError, one line) a file that `make_folds` cannot split, or whose split would leave a fold with no
    training row of a class that the data has: that fold's model could never predict the class, and its validation
    rows of it would score as if it could.

    Fast checks first, without sklearn (whose import takes seconds): every class with fewer rows than folds (sklearn
    refuses to stratify), a class whose rows all share one prompt (the fold that validates that prompt has none of
    the class to train on). Then the split itself, exactly as the flow makes it (`make_folds` with cv.seed), for the
    folds this run trains (`folds`, default all).
    """
    from pref_core.data.labels import LABEL_COLUMNS

    keys = frame["prompt"].map(prompt_group_key)
    labels = frame["label"].to_numpy(dtype=np.int64)
    present = [int(k) for k in np.unique(labels)]
    counts = {k: int((labels == k).sum()) for k in present}
    if counts and all(c < n_folds for c in counts.values()):
        shown = ", ".join(f"{LABEL_COLUMNS[k]} {c}" for k, c in counts.items())
        fix = f"set --set cv.n_folds={max(counts.values())} or add rows" if max(counts.values()) >= 2 else "add rows"
        raise SplitError(
            f"data.train_csv: every class has fewer rows than cv.n_folds={n_folds} ({shown}); a stratified split "
            f"needs one class with at least {n_folds} rows; {fix}"
        )
    for k in present:
        if keys[labels == k].nunique() < 2:
            name = LABEL_COLUMNS[k]
            what = f"the only {name} row" if counts[k] == 1 else f"all {counts[k]} {name} rows share one prompt, and"
            raise SplitError(
                f"data.train_csv: {what} lands in one fold's validation set, leaving that fold no {name} row to "
                f"train on; add {name} rows with other prompts, or remove the class's rows"
            )
    try:
        assignment = make_folds(frame, n_folds, seed)["fold"].to_numpy()
    except ValueError as err:  # what sklearn cannot split, in its words
        raise SplitError(f"data.train_csv: cannot split into cv.n_folds={n_folds} folds ({err}); add rows") from None
    for fold in folds if folds is not None else range(n_folds):
        training = set(np.unique(labels[assignment != fold]).tolist())
        missing = [LABEL_COLUMNS[k] for k in present if k not in training]
        if missing:
            raise SplitError(
                f"data.train_csv: with cv.n_folds={n_folds} and cv.seed={seed}, fold {fold} has no training row "
                f"labelled {', '.join(missing)} (too few rows or prompts of that class); add such rows, lower "
                "cv.n_folds, or try another cv.seed"
            )
