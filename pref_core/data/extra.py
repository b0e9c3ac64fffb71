"""Extra training data: generic chosen/rejected pairs and extra arena CSVs, converted to arena rows.

Extra rows only ever join the training folds (the orchestration appends them to
each fold's training split, never to validation), and rows whose prompt also
appears in the main data are dropped first, so a validation prompt can never be
seen in training through the back door.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd

from pref_core.data.arena import IngestResult, read_arena_csv, validate_arena_frame
from pref_core.data.folds import prompt_group_key
from pref_core.data.labels import INDEX_A, INDEX_B, LABEL_COLUMNS, TURN_COLUMNS
from pref_core.data.problems import DataValidationError, Problem, ProblemCollector

# HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ..." repeated; the speaker tags start a line.
_TURN = re.compile(r"\n\n(Human|Assistant): ")


def split_transcript(text: str) -> list[tuple[str, str]]:
    """[(speaker, text), ...] of an HH-RLHF style transcript; raises ValueError when it has no turns."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not a transcript: it must start with '\\n\\nHuman: ' and alternate Human/Assistant turns")
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def pair_to_arena(chosen: str, rejected: str, chosen_on_a: bool) -> dict:
    """One arena row (JSON cells as strings) from two transcripts that differ only in the last assistant turn.

    The prompt is the human turns; each response list holds the assistant turns, shared earlier ones
    included (an arena row has one response entry per prompt turn).
    """
    good, bad = split_transcript(chosen), split_transcript(rejected)
    if len(good) != len(bad) or good[:-1] != bad[:-1]:
        raise ValueError("chosen and rejected must share every turn but the last assistant turn")
    if good[-1][0] != "Assistant" or bad[-1][0] != "Assistant":
        raise ValueError("both transcripts must end with an Assistant turn")
    humans = [t for s, t in good if s == "Human"]
    shared = [t for s, t in good[:-1] if s == "Assistant"]
    if len(humans) != len(shared) + 1:
        raise ValueError("turns must alternate Human/Assistant, one assistant answer per human turn")
    a_last, b_last = (good[-1][1], bad[-1][1]) if chosen_on_a else (bad[-1][1], good[-1][1])
    cells = (humans, shared + [a_last], shared + [b_last])
    winner = INDEX_A if chosen_on_a else INDEX_B
    return {
        **{c: json.dumps(turns, ensure_ascii=False) for c, turns in zip(TURN_COLUMNS, cells)},
        **{c: int(k == winner) for k, c in enumerate(LABEL_COLUMNS)},
    }


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_pairs(path: Union[str, Path], seed: int = 0, max_bad_fraction: float = 0.0) -> IngestResult:
    """Chosen/rejected JSON lines -> validated arena rows; chosen goes to side a or b at random (seeded).

    Ids are ``<file stem>:<line number>``. Bad lines are reported with their line number and
    handled by the same `max_bad_fraction` policy as the main data.
    """
    path = Path(path)
    stem = path.name.split(".")[0]
    collector = ProblemCollector(lambda number: f"{stem}:{number}")  # rows are named by their line number
    rows, n_read = _convert_pairs(path, stem, random.Random(seed), collector.report)
    if n_read == 0:
        raise DataValidationError(
            path, f"{path}: no pairs found", [Problem(None, None, "the file holds no JSON lines")]
        )
    collector.check_bad_share(n_read, max_bad_fraction, path, str(path), noun="pairs")
    result = validate_arena_frame(pd.DataFrame(rows), kind="train", max_bad_fraction=max_bad_fraction, source=str(path))
    rejected = pd.concat([collector.rejected_frame(), result.rejected], ignore_index=True)
    return IngestResult(
        frame=result.frame,
        rejected=rejected,
        n_read=n_read,
        n_kept=len(result.frame),
        n_rejected=n_read - len(result.frame),
    )


def _convert_pairs(path: Path, stem: str, rng: random.Random, report) -> tuple[list[dict], int]:
    """(arena rows of the good lines, number of non-blank lines); bad lines are reported by line number."""
    rows, n_read = [], 0
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            chosen_on_a = rng.random() < 0.5  # drawn for every line, so a bad line does not shift the others
            if not line.strip():
                continue
            n_read += 1
            try:
                record = json.loads(line)
                if (
                    not isinstance(record, dict)
                    or not isinstance(record.get("chosen"), str)
                    or not isinstance(record.get("rejected"), str)
                ):
                    raise ValueError('each line must be a JSON object with string fields "chosen" and "rejected"')
                rows.append(
                    {"id": f"{stem}:{number}", **pair_to_arena(record["chosen"], record["rejected"], chosen_on_a)}
                )
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                report(number, "chosen/rejected", f"{err}; fix: see the HH-RLHF transcript format")
    return rows, n_read


def deduplicate_extra(extra: pd.DataFrame, main: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop extra rows whose prompt appears in the main data; returns (kept, dropped).

    Only the main data's prompts count: they may sit in a validation fold, which an extra row with the
    same prompt would leak into training. Extra rows that share a prompt among themselves are distinct,
    legitimate pairs (other responses to the same question) and all stay.
    """
    main_keys = set(main["prompt"].map(prompt_group_key))
    keep = ~extra["prompt"].map(prompt_group_key).isin(main_keys)
    kept = extra[keep.to_numpy()].reset_index(drop=True)
    return kept, int(len(extra) - len(kept))


def combine_extra(frames: Sequence[tuple[str, pd.DataFrame]], main: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Concatenate named extra frames with ids prefixed ``extra:<name>:``, deduplicated against `main`.

    Returns (frame, counts) where counts holds rows per source and the number dropped as duplicates.
    """
    pieces, counts = [], {}
    for name, frame in frames:
        piece = frame.copy()
        piece["id"] = f"extra:{name}:" + piece["id"].astype(str)
        pieces.append(piece)
        counts[f"n_extra_{name}"] = len(piece)
    columns = ["id", *TURN_COLUMNS, *LABEL_COLUMNS, "label"]
    combined = pd.concat([p[columns] for p in pieces], ignore_index=True) if pieces else pd.DataFrame(columns=columns)
    kept, dropped = deduplicate_extra(combined, main)
    counts["n_extra_duplicates_dropped"] = dropped
    counts["n_extra_kept"] = len(kept)
    return kept, counts


def read_extra_sources(
    extra_csvs: Sequence[Union[str, Path]],
    extra_pairs: Sequence[Union[str, Path]],
    main: pd.DataFrame,
    seed: int = 0,
    max_bad_fraction: float = 0.0,
) -> tuple[IngestResult, dict]:
    """Every extra source read and combined (data.extra_csvs as arena CSVs, then data.extra_pairs as pairs),
    deduplicated against `main`'s prompts (`combine_extra`).

    Returns (result, counts): result.frame the kept rows; result.rejected each source's rejected rows with a
    `source` column; result.n_read the rows read over all sources; counts as `combine_extra`'s.
    """
    frames, rejected, n_read = [], [], 0
    for index, path in enumerate([*extra_csvs, *extra_pairs]):
        if index < len(extra_csvs):
            result = read_arena_csv(path, kind="train", max_bad_fraction=max_bad_fraction)
        else:
            result = read_pairs(path, seed=seed, max_bad_fraction=max_bad_fraction)
        frames.append((source_name(path, index), result.frame))
        rejected.append(result.rejected.assign(source=str(path)))
        n_read += result.n_read
    combined, counts = combine_extra(frames, main)
    rejected_frame = pd.concat(rejected, ignore_index=True) if rejected else pd.DataFrame()
    # n_rejected counts the rows rejected and those dropped as duplicates of a main prompt.
    return IngestResult(
        frame=combined, rejected=rejected_frame, n_read=n_read, n_kept=len(combined), n_rejected=n_read - len(combined)
    ), counts


def source_name(path: Union[str, Path], index: Optional[int] = None) -> str:
    """A short, id-safe name for an extra source: the file stem (plus its position when given)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).name.split(".")[0]).strip("-") or "extra"
    return f"{stem}-{index}" if index is not None else stem


def write_arena_csv(frame: pd.DataFrame, path: Union[str, Path]) -> Path:
    """Write parsed arena rows (turn lists) back as a Kaggle-format CSV with JSON list cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = pd.DataFrame({"id": frame["id"].astype(str)})
    for column in TURN_COLUMNS:
        out[column] = [json.dumps(list(turns), ensure_ascii=False) for turns in frame[column]]
    for column in LABEL_COLUMNS:
        if column in frame.columns:
            out[column] = frame[column].astype(int)
    out.to_csv(path, index=False)
    return path
