"""Pseudo-labels fold by fold: unlabelled arena rows that train fold k carry soft labels from teacher fold k only.

Why fold k only: teacher fold k is the one teacher model that never trained on fold k's validation rows. A
teacher that did (any other fold's model, or a model fitted on all rows) has those rows' labels in its weights,
and its predictions of similar unlabelled rows would pass them into the student's fold k: its OOF would be
better than any test set will see.

What this module holds (pure pandas/numpy; where the teacher's predictions come from is the caller's business):
- the checks on the unlabelled rows, before any work: no label columns, at least one row, no id shared with
  the training (or extra) rows, since the soft labels are joined to the rows by id;
- the selection of at most data.pseudo_max_rows rows (seeded, the same rows for every fold);
- the content hash of the selected rows and the cache key of one teacher fold's predictions of them;
- the leak rule (`rows_for_fold`): fold k takes pseudo-labels made by teacher fold k only, and drops the rows
  whose prompt is one of fold k's validation prompts (the folds are grouped by prompt; a validation prompt must
  not reach training by the back door, as extra_data does for extra rows).
Pseudo rows only ever join a fold's training rows: never validation, OOF or calibration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping

import numpy as np
import pandas as pd

from pref_core.data.folds import prompt_group_key
from pref_core.data.labels import LABEL_COLUMNS, NUM_CLASSES, TURN_COLUMNS
from pref_core.errors import UserError

PSEUDO_COLUMNS: tuple[str, ...] = ("id", "teacher_fold", *LABEL_COLUMNS)
CACHE_KEY_FORMAT = 1


class PseudoLabelError(UserError, ValueError):
    """Unlabelled rows or pseudo-labels that cannot be used without a leak or a wrong join: one line, the fix."""


def check_unlabeled_columns(columns: Iterable[str], source: str) -> None:
    """Refuse an unlabelled file whose header carries label columns: labelled rows belong in data.extra_csvs."""
    present = [c for c in LABEL_COLUMNS if c in set(columns)]
    if present:
        raise PseudoLabelError(
            f"{source}: unlabelled rows carry label column(s) {present}; fix: put labelled rows "
            "in data.extra_csvs, or drop the label columns to use them as unlabelled rows"
        )


def check_unlabeled_rows(frame: pd.DataFrame, source: str, taken_ids: Collection[str]) -> None:
    """Refuse an empty set of unlabelled rows, or one sharing an id with the training or extra rows (`taken_ids`):
    the teacher's soft labels are joined by id, so a shared id would put a pseudo-label on a labelled row."""
    if frame.empty:
        raise PseudoLabelError(f"{source}: no unlabelled rows; fix: point it to a file with rows, or remove it")
    ids = frame["id"].astype(str)
    taken = set(map(str, taken_ids))
    shared = [i for i in ids if i in taken]
    if shared:
        raise PseudoLabelError(
            f"{source}: row id {shared[0]} ({len(shared)} ids in all) is also a training row's id; "
            "fix: give unlabelled rows their own ids, and never pass the training file as "
            "unlabelled"
        )
    repeated = ids[ids.duplicated()]
    if not repeated.empty:
        raise PseudoLabelError(f"{source}: row id {repeated.iloc[0]} appears more than once; fix: ids must be unique")


def select_pseudo_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows drawn without replacement (seeded), in their original order: the same rows for
    every fold, so each teacher fold predicts them once."""
    if max_rows is None or len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    if max_rows < 1:
        raise PseudoLabelError(f"data.pseudo_max_rows={max_rows}; fix: use a positive number, or null for all rows")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(frame))[:max_rows])
    return frame.iloc[chosen].reset_index(drop=True)


def rows_content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the rows' ids and turns, in order: equal for the same rows however the file was written."""
    digest = hashlib.sha256()
    for row in zip(frame["id"].astype(str), *(frame[c] for c in TURN_COLUMNS)):
        digest.update(json.dumps([row[0], *(list(t) for t in row[1:])], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def pseudo_cache_key(teacher: str, teacher_fold: int, rows_hash: str, inference: Mapping) -> str:
    """The cache key of teacher fold `teacher_fold`'s predictions of the rows hashed to `rows_hash`.

    `teacher`: what identifies the teacher's fold models (its parent run id, or a registered version's run id);
    `inference`: everything else that changes the probabilities (prompt template and lengths, tta_swap, the base
    model's fingerprint, the teacher's temperature). Any change gives another key, so a stale file is never read.
    """
    payload = {
        "format": CACHE_KEY_FORMAT,
        "teacher": str(teacher),
        "teacher_fold": int(teacher_fold),
        "rows": rows_hash,
        "inference": inference,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pseudo_labels_frame(ids, probs, teacher_fold: int) -> pd.DataFrame:
    """The PSEUDO_COLUMNS frame of teacher fold `teacher_fold`'s (n, 3) probabilities of the rows `ids`."""
    probs = np.asarray(probs, dtype=np.float64)
    ids = [str(i) for i in ids]
    if probs.shape != (len(ids), NUM_CLASSES) or not np.isfinite(probs).all() or (probs < 0).any():
        raise PseudoLabelError(
            f"teacher fold {teacher_fold}: {probs.shape} probabilities for {len(ids)} rows; "
            "fix: predict one softmax row per unlabelled row"
        )
    frame = pd.DataFrame({"id": ids, "teacher_fold": int(teacher_fold)})
    normalised = probs / probs.sum(axis=1, keepdims=True)
    for k, column in enumerate(LABEL_COLUMNS):
        frame[column] = normalised[:, k]
    return frame


def rows_for_fold(
    unlabeled: pd.DataFrame, pseudo: pd.DataFrame, fold: int, val_prompt_keys: Collection[str], source: str
) -> tuple[pd.DataFrame, dict]:
    """The unlabelled rows fold `fold` trains on, with their soft labels as LABEL_COLUMNS, and counts to log.

    `pseudo` must be teacher fold `fold`'s predictions (pseudo_labels_frame) of exactly the rows of `unlabeled`;
    anything else is refused (the leak rule). Rows whose prompt (folds.prompt_group_key) is among
    `val_prompt_keys`, the prompts of fold `fold`'s validation rows, are dropped and counted.
    """
    folds = set(pseudo["teacher_fold"].astype(int))
    if folds != {int(fold)}:
        other = sorted(folds - {int(fold)})
        raise PseudoLabelError(
            f"{source}: student fold {fold} was handed pseudo-labels of teacher fold(s) "
            f"{other or sorted(folds)}; fold {fold} may only read teacher fold {fold} (another "
            "fold's teacher trained on this fold's validation rows); fix: clear the pseudo-label "
            "cache and predict the rows with each fold's own teacher"
        )
    ids = unlabeled["id"].astype(str)
    if set(ids) != set(pseudo["id"].astype(str)) or len(pseudo) != len(unlabeled):
        missing = sorted(set(ids) - set(pseudo["id"].astype(str)))
        raise PseudoLabelError(
            f"{source}: teacher fold {fold}'s pseudo-labels do not cover the unlabelled rows "
            f"one to one (first missing id {missing[0] if missing else 'none'}); fix: clear the "
            "pseudo-label cache so that the rows are predicted again"
        )
    soft = pseudo.assign(id=pseudo["id"].astype(str)).set_index("id").loc[ids, list(LABEL_COLUMNS)]
    keep = ~unlabeled["prompt"].map(prompt_group_key).isin(set(val_prompt_keys)).to_numpy()
    rows = unlabeled.assign(id=ids).drop(columns=list(LABEL_COLUMNS), errors="ignore")
    for column in LABEL_COLUMNS:
        rows[column] = soft[column].to_numpy()
    rows = rows[keep].reset_index(drop=True)
    return rows, {"n_pseudo_rows": int(keep.sum()), "n_pseudo_dropped_validation_prompt": int((~keep).sum())}
