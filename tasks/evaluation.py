"""Out-of-fold evaluation and the submission, assembled from the fold runs' MLflow artifacts.

Fold outputs are read back from MLflow, not from the fold's disk: a fold may
have run on another machine that shares only the tracking server.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from prefect import task

from pref_core import metrics as core_metrics
from pref_core import plots
from pref_core.calibration import apply_temperature, fit_temperature
from pref_core.config import RunConfig
from pref_core.ensemble import average_probabilities
from pref_core.labels import LABEL_COLUMNS
from arena_pref.tasks import tracking, workspace
from arena_pref.tasks.preparation import TASK_DEFAULTS, PreparedInputs

LOGGER = logging.getLogger(__name__)


class IncompleteOOFError(RuntimeError):
    """The out-of-fold predictions do not cover the kept rows exactly once."""


@dataclass
class OOFOutput:
    oof_path: str
    metrics: dict
    fold_log_loss: dict
    temperature: float = 1.0  # calibration applied to the submission and by the registered model
    fold_accuracy: dict = field(default_factory=dict)
    fold_rows: dict = field(default_factory=dict)


def _download(client, run_id: str, name: str, dest: Path) -> Path:
    return Path(client.download_artifacts(run_id, name, str(dest)))


@task(name="evaluate-oof", **TASK_DEFAULTS)
def evaluate_oof(config: RunConfig, parent_run_id: str, fold_run_ids: dict[int, str], prepared: PreparedInputs) -> OOFOutput:
    """Join the folds' validation predictions, check coverage, compute OOF metrics, log table and plots."""
    client = tracking.get_client(config)
    pieces, fold_log_loss = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for fold, run_id in sorted(fold_run_ids.items()):
            path = _download(client, run_id, "val_predictions.parquet", Path(tmp) / f"fold_{fold}")
            piece = pd.read_parquet(path)
            piece.insert(1, "fold", fold)
            pieces.append(piece)
            fold_log_loss[fold] = float(client.get_run(run_id).data.metrics["val_log_loss"])
    oof = pd.concat(pieces, ignore_index=True)
    oof["id"] = oof["id"].astype(str)

    kept = pd.read_parquet(prepared.train.parsed_path, columns=["id", "label"])
    folds = pd.read_parquet(prepared.folds_path)
    expected = set(folds.loc[folds["fold"].isin(list(fold_run_ids)), "id"].astype(str))
    duplicated = oof["id"][oof["id"].duplicated()].tolist()
    missing = expected - set(oof["id"])
    extra = set(oof["id"]) - expected
    if duplicated or missing or extra:
        raise IncompleteOOFError(
            f"OOF predictions must cover each validation row exactly once: {len(duplicated)} duplicated "
            f"(e.g. {duplicated[:3]}), {len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} unexpected."
        )
    # The label comes from the ingested data, not from what the folds echoed back.
    oof = oof.drop(columns=["label"], errors="ignore").merge(kept, on="id", how="left")
    labels = oof["label"].to_numpy()
    probs = oof[list(LABEL_COLUMNS)].to_numpy()
    summary = core_metrics.summarize_predictions(labels, probs)
    metrics = {
        "oof_log_loss": float(summary["log_loss"]),
        "oof_accuracy": float(summary["accuracy"]),
        "prior_log_loss": float(summary["prior_log_loss"]),
        "n_oof": int(len(oof)),
    }
    temperature = 1.0
    if config.calibration.method == "temperature":
        temperature = fit_temperature(labels, probs)
        metrics["temperature"] = temperature
        metrics["oof_log_loss_calibrated"] = float(
            core_metrics.compute_log_loss(labels, apply_temperature(probs, temperature))
        )

    plot_temperature = temperature if config.calibration.method == "temperature" else fit_temperature(labels, probs)

    out_dir = workspace.run_dir(config, prepared.run_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    oof_path = out_dir / "oof_predictions.parquet"
    oof[["id", "fold", *LABEL_COLUMNS, "label"]].to_parquet(oof_path, index=False)

    tracking.log_metrics(client, parent_run_id, metrics)
    client.log_artifact(parent_run_id, str(oof_path))
    figures = {
        "plots/fold_log_loss.png": plots.plot_fold_log_loss(fold_log_loss, metrics["oof_log_loss"], metrics["prior_log_loss"]),
        "plots/reliability.png": plots.plot_reliability(labels, probs),
        "plots/confusion_matrix.png": plots.plot_confusion(labels, probs),
        # The fitted temperature is shown even when calibration.method=none (then it is not applied).
        "plots/calibration_temperature.png": plots.plot_calibration_before_after(
            labels, probs, apply_temperature(probs, plot_temperature), plot_temperature),
        "plots/log_loss_by_length.png": plots.plot_log_loss_by_length(
            labels, probs, _text_lengths(prepared.train.parsed_path, oof["id"]), metrics["oof_log_loss"]),
    }
    for name, figure in figures.items():
        client.log_figure(parent_run_id, figure, name)
    LOGGER.info(
        "OOF log loss %.4f (prior %.4f), accuracy %.3f over %d rows; temperature %.3f -> calibrated %.4f",
        metrics["oof_log_loss"], metrics["prior_log_loss"], metrics["oof_accuracy"], len(oof),
        temperature, metrics.get("oof_log_loss_calibrated", metrics["oof_log_loss"]),
    )
    fold_index = oof["fold"].to_numpy()
    fold_accuracy = {k: core_metrics.compute_accuracy(labels[fold_index == k], probs[fold_index == k]) for k in fold_log_loss}
    fold_rows = {k: int((fold_index == k).sum()) for k in fold_log_loss}
    return OOFOutput(oof_path=str(oof_path), metrics=metrics, fold_log_loss=fold_log_loss, temperature=temperature,
                     fold_accuracy=fold_accuracy, fold_rows=fold_rows)


def _text_lengths(parsed_path: str, ids: pd.Series) -> np.ndarray:
    """Characters of prompt + both responses per row (before any truncation), aligned on `ids`."""
    frame = pd.read_parquet(parsed_path, columns=["id", "prompt", "response_a", "response_b"])
    total = sum(frame[c].map(lambda turns: sum(len(t) for t in turns if t)) for c in ("prompt", "response_a", "response_b"))
    return pd.Series(total.to_numpy(), index=frame["id"].astype(str)).loc[ids.astype(str)].to_numpy()


def validate_submission(submission: pd.DataFrame, test_ids: list[str]) -> None:
    """One row per test id in input order, probabilities in [0, 1] summing to 1, no NaN."""
    problems = []
    if list(submission.columns) != ["id", *LABEL_COLUMNS]:
        problems.append(f"columns are {list(submission.columns)}, expected {['id', *LABEL_COLUMNS]}")
    elif submission["id"].astype(str).tolist() != [str(i) for i in test_ids]:
        problems.append("ids differ from the test file's ids in input order")
    else:
        values = submission[list(LABEL_COLUMNS)].to_numpy(dtype=float)
        if np.isnan(values).any():
            problems.append(f"{int(np.isnan(values).any(axis=1).sum())} rows hold NaN")
        elif (values < 0).any() or (values > 1).any():
            problems.append("probabilities outside [0, 1]")
        elif not np.allclose(values.sum(axis=1), 1.0, atol=1e-6):
            problems.append("rows do not sum to 1 within 1e-6")
    if problems:
        raise ValueError("invalid submission: " + "; ".join(problems))


def average_fold_predictions(frames: list[pd.DataFrame], test_ids: list[str], temperature: float = 1.0) -> pd.DataFrame:
    """Mean of the folds' (n, 3) probabilities, each calibrated before the mean (where the OOF
    temperature was fit), aligned on id, in the test file's order."""
    ids = [str(i) for i in test_ids]
    probs = average_probabilities(
        [f.set_index(f["id"].astype(str)).loc[ids, list(LABEL_COLUMNS)].to_numpy() for f in frames], temperature
    )
    out = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    out.insert(0, "id", [str(i) for i in test_ids])
    return out


def _fill_rejected_with_prior(submission: pd.DataFrame, prepared: PreparedInputs) -> tuple[pd.DataFrame, list[str]]:
    """Kaggle scores a submission only with one row per test id: rows that ingest rejected (allowed by
    data.max_bad_fraction) get the training class prior, loudly, instead of going missing."""
    all_ids = pd.read_csv(prepared.test.source, dtype=str, keep_default_na=False, usecols=["id"],
                          encoding="utf-8-sig")["id"].tolist()
    labels = pd.read_parquet(prepared.train.parsed_path, columns=["label"])["label"].to_numpy()
    prior = np.bincount(labels, minlength=len(LABEL_COLUMNS)) / len(labels)
    predicted = submission.set_index("id")
    missing = [i for i in all_ids if i not in predicted.index]
    filler = pd.DataFrame([prior] * len(missing), columns=list(LABEL_COLUMNS), index=pd.Index(missing, name="id"))
    full = pd.concat([predicted, filler]).loc[all_ids].reset_index()
    LOGGER.warning(
        "submission: %d test rows were rejected at ingest (see %s); they get the class prior %s",
        len(missing), prepared.test.rejected_path, np.round(prior, 4).tolist(),
    )
    return full, all_ids


@task(name="make-submission", **TASK_DEFAULTS)
def make_submission(
    config: RunConfig, parent_run_id: str, fold_run_ids: dict[int, str], prepared: PreparedInputs, oof: OOFOutput
) -> Optional[str]:
    """Average the folds' test predictions, apply the OOF temperature, write submission.csv (validated first)."""
    if prepared.test is None:
        return None
    client = tracking.get_client(config)
    test_ids = pd.read_parquet(prepared.test.parsed_path, columns=["id"])["id"].astype(str).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        frames = [
            pd.read_parquet(_download(client, run_id, "test_predictions.parquet", Path(tmp) / f"fold_{fold}"))
            for fold, run_id in sorted(fold_run_ids.items())
        ]
    submission = average_fold_predictions(frames, test_ids, oof.temperature)
    if prepared.test.n_rejected:
        submission, test_ids = _fill_rejected_with_prior(submission, prepared)
        tracking.log_metrics(client, parent_run_id, {"n_test_prior_filled": prepared.test.n_rejected})
    validate_submission(submission, test_ids)
    dest = workspace.run_dir(config, prepared.run_key) / "submission.csv"
    submission.to_csv(dest, index=False)
    client.log_artifact(parent_run_id, str(dest))
    LOGGER.info("submission with %d rows written to %s", len(submission), dest)
    return str(dest)
