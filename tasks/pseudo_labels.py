"""Pseudo-labels fold by fold (distill.pseudo_from): the unlabelled rows, the teacher's per-fold predictions of
them (made once per teacher fold, cached by content), and the rows student fold k trains on.

Student fold k reads the predictions of teacher fold k only: the one teacher model that never trained on fold k's
validation rows (pref_core.data.pseudo.rows_for_fold refuses anything else). The parent flow predicts every
missing teacher fold at once, over one load of the teacher's base; a fold worker on another machine predicts its
own fold when the cache there lacks it.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
from prefect import task

from arena_pref.tasks import workspace
from arena_pref.tasks.preparation import TASK_DEFAULTS, IngestOutput, PreparedInputs
from pref_core.config.loading import load_config
from pref_core.config.schema import RunConfig
from pref_core.data.fold_rows import TeacherMismatchError, check_teacher_split
from pref_core.data.pseudo import (
    pseudo_cache_key,
    pseudo_labels_frame,
    read_unlabeled_sources,
    rows_content_hash,
    select_pseudo_rows,
)
from pref_core.hashing import hash_file, hash_json
from pref_core.publish import publishing_file

LOGGER = logging.getLogger(__name__)

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?$")


def unlabeled_sources(config: RunConfig) -> list[Path]:
    return [*config.data.unlabeled_csvs, *config.data.unlabeled_pairs]


@task(name="ingest-unlabeled", **TASK_DEFAULTS)
def ingest_unlabeled(config: RunConfig, train: IngestOutput, extra: Optional[IngestOutput]) -> Optional[IngestOutput]:
    """The unlabelled rows (data.unlabeled_csvs, data.unlabeled_pairs) checked against the training and extra ids,
    at most data.pseudo_max_rows of them (drawn with cv.seed), stored as parquet keyed by their sources' hashes."""
    sources = unlabeled_sources(config)
    if not sources:
        return None
    key = hash_json(
        [
            [hash_file(p) for p in config.data.unlabeled_csvs],
            [hash_file(p) for p in config.data.unlabeled_pairs],
            train.data_hash,
            extra.data_hash if extra else None,
            config.data.extra_seed,
            config.data.pseudo_max_rows,
            config.cv.seed,
            config.data.max_bad_fraction,
        ]
    )
    folder = workspace.ingest_dir(config, f"unlabeled-{key}")
    parsed_path, meta_path = folder / "unlabeled.parquet", folder / "unlabeled.json"
    if meta_path.exists() and parsed_path.exists():
        LOGGER.info("ingest unlabeled: %d sources already prepared (key %s), reusing", len(sources), key)
        return IngestOutput(**{**json.loads(meta_path.read_text()), "reused": True})
    taken = set(pd.read_parquet(train.parsed_path, columns=["id"])["id"].astype(str))
    if extra is not None:
        taken |= set(pd.read_parquet(extra.parsed_path, columns=["id"])["id"].astype(str))
    result, counts = read_unlabeled_sources(
        config.data.unlabeled_csvs,
        config.data.unlabeled_pairs,
        taken,
        seed=config.data.extra_seed,
        max_bad_fraction=config.data.max_bad_fraction,
    )
    rows = select_pseudo_rows(result.frame, config.data.pseudo_max_rows, config.cv.seed)
    with publishing_file(parsed_path) as staging:
        rows.to_parquet(staging, index=False)
    LOGGER.info(
        "ingest unlabeled: %s; %d of %d rows used (data.pseudo_max_rows=%s)",
        ", ".join(f"{k}={v}" for k, v in counts.items()),
        len(rows),
        len(result.frame),
        config.data.pseudo_max_rows,
    )
    out = IngestOutput(
        kind="unlabeled",
        source=";".join(str(p) for p in sources),
        data_hash=f"unlabeled-{key}",
        parsed_path=str(parsed_path),
        rejected_path=None,
        n_read=result.n_read,
        n_kept=len(rows),
        n_rejected=result.n_rejected,
    )
    meta_path.write_text(json.dumps({k: v for k, v in asdict(out).items() if k != "reused"}))
    return out


@dataclass
class Teacher:
    """distill.pseudo_from resolved: its cv-training run, what its fold models were trained with, where its base is
    on this machine and the temperature its predictions are calibrated with."""

    run_id: str
    config: RunConfig
    base: str
    temperature: float
    fold_runs: dict  # fold -> its finished fold run


def resolve_teacher(config: RunConfig, train_hash: str, client) -> Teacher:
    """distill.pseudo_from (a cv-training parent run id, or a models:/ URI of its registered version), checked to
    split the same data into the same folds as this run (TeacherMismatchError in one line otherwise)."""
    from mlflow.exceptions import MlflowException

    field, given = "distill.pseudo_from", config.distill.pseudo_from
    run_id = given
    match = _MODELS_URI.match(given)
    try:
        if match:
            version = (
                client.get_model_version(match["name"], match["version"])
                if match["version"]
                else client.get_model_version_by_alias(match["name"], match["alias"])
            )
            run_id = version.run_id
        run = client.get_run(run_id)
    except MlflowException:
        raise TeacherMismatchError(
            f"{field}: no run or registered version {given!r} in {client.tracking_uri}; give the parent run id of "
            "the teacher's cv-training, or its models:/NAME/VERSION"
        ) from None
    if run.data.tags.get("arena_pref.kind") != "cv":
        raise TeacherMismatchError(
            f"{field}={given}: run {run_id} is not a cv-training run (kind {run.data.tags.get('arena_pref.kind')}); "
            "the teacher's fold k must be a model that never saw fold k's validation rows: name a cv-training run"
        )
    tags = run.data.tags
    check_teacher_split(run_id, run.data.params, tags, train_hash, config.cv.n_folds, config.cv.seed, False, field)
    fold_runs = {}
    for fold in config.cv.fold_indices():
        found = client.search_runs(
            [run.info.experiment_id],
            f"tags.mlflow.parentRunId = '{run_id}' and tags.arena_pref.fold = '{fold}' "
            "and attributes.status = 'FINISHED'",
        )
        if not found:
            raise TeacherMismatchError(
                f"{field}={given}: the teacher has no finished fold {fold}; train that fold of the teacher first"
            )
        fold_runs[fold] = found[0].info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        teacher_config = load_config(client.download_artifacts(run_id, "config.yaml", tmp))
    base = tags.get("arena_pref.base_model") or str(teacher_config.model.name_or_path)
    if not Path(base).exists() and teacher_config.model.name_or_path:
        base = teacher_config.model.name_or_path  # a Hub base: its cache (or the Hub) at model.revision
    temperature = float(run.data.metrics.get("temperature", 1.0))
    return Teacher(run_id, teacher_config, base, temperature, fold_runs)


def _inference(teacher: Teacher) -> dict:
    """What, besides the teacher's fold models and the rows, decides the pseudo-labels (part of the cache key)."""
    return {
        "model": teacher.config.model.model_dump(mode="json"),
        "prompt": teacher.config.prompt.model_dump(mode="json"),
        "tta_swap": teacher.config.train.tta_swap,
        "base": teacher.base,
        "temperature": teacher.temperature,
    }


@task(name="teacher-pseudo-labels", **TASK_DEFAULTS)
def teacher_pseudo_labels(config: RunConfig, prepared: PreparedInputs, folds: list[int]) -> dict[int, str]:
    """fold -> the cached predictions of the unlabelled rows by teacher fold `fold` (pseudo_labels_frame). Missing
    folds are predicted now, all over one load of the teacher's base, calibrated by the teacher's temperature."""
    from arena_pref.tasks import tracking

    client = tracking.get_client(config)
    teacher = resolve_teacher(config, prepared.train_hash, client)
    unlabeled = pd.read_parquet(prepared.unlabeled.parsed_path)
    rows_hash, inference = rows_content_hash(unlabeled), _inference(teacher)
    folder = workspace.output_root(config) / "cache" / "pseudo"
    paths = {k: folder / f"{pseudo_cache_key(teacher.run_id, k, rows_hash, inference)}.parquet" for k in folds}
    missing = [k for k in folds if not paths[k].is_file()]
    if missing:
        _predict_teacher_folds(teacher, missing, unlabeled, paths, client)
    LOGGER.info(
        "pseudo-labels of %d unlabelled rows: teacher folds %s predicted now, %s read from %s",
        len(unlabeled),
        missing,
        [k for k in folds if k not in missing],
        folder,
    )
    return {k: str(path) for k, path in paths.items()}


def _predict_teacher_folds(teacher: Teacher, folds: list[int], unlabeled: pd.DataFrame, paths: dict, client) -> None:
    """Teacher folds `folds` predict the rows (their adapters switched over one base load); each fold's
    calibrated probabilities are written atomically to its cache file."""
    from transformers import AutoTokenizer

    from pref_core.evaluate.calibration import apply_temperature
    from pref_core.predict.ensemble import encode_frame, predict_fold_probabilities

    with tempfile.TemporaryDirectory() as tmp:
        adapters = [Path(client.download_artifacts(teacher.fold_runs[k], "adapter", f"{tmp}/fold_{k}")) for k in folds]
        tokenizer = AutoTokenizer.from_pretrained(adapters[0])
        train = teacher.config.train
        ids, ids_swap = encode_frame(unlabeled, tokenizer, teacher.config.prompt, with_swap=train.tta_swap)
        outputs, _ = predict_fold_probabilities(
            teacher.config.model, adapters, ids, ids_swap, batch_size=train.eval_batch_size, base_model=teacher.base
        )
    for fold, probs in zip(folds, outputs):
        frame = pseudo_labels_frame(unlabeled["id"], apply_temperature(probs, teacher.temperature), fold)
        with publishing_file(paths[fold]) as staging:
            frame.to_parquet(staging, index=False)
    _release_accelerator()


def _release_accelerator() -> None:
    """Give the teacher's GPU memory back before the folds start (fold processes share the device)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fold_pseudo_rows(config: RunConfig, prepared: PreparedInputs, fold: int, val_ids) -> tuple[Optional[object], dict]:
    """(the pseudo-labelled training rows of fold `fold` as a tokenized dataset, counts to log), or (None, {})
    without distill.pseudo_from. Fold `fold` reads teacher fold `fold`'s predictions only, without the rows whose
    prompt is one of its validation prompts (pref_core.data.pseudo.rows_for_fold)."""
    from pref_core.data.fold_rows import pseudo_dataset
    from pref_core.data.pseudo import rows_for_fold, validation_prompt_keys
    from pref_core.text.tokenization import load_token_cache

    if config.distill.pseudo_from is None:
        return None, {}
    path = teacher_pseudo_labels(config, prepared, [fold])[fold]
    unlabeled = pd.read_parquet(prepared.unlabeled.parsed_path)
    keys = validation_prompt_keys(pd.read_parquet(prepared.train.parsed_path, columns=["id", "prompt"]), val_ids)
    source = f"distill.pseudo_from={config.distill.pseudo_from} ({path})"
    rows, counts = rows_for_fold(unlabeled, pd.read_parquet(path), fold, keys, source)
    dataset = pseudo_dataset(load_token_cache(prepared.unlabeled_tokens.path), rows, config.data.pseudo_weight)
    return dataset, counts
