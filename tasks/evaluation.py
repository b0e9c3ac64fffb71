"""Out-of-fold evaluation and the submission, assembled from the fold runs' MLflow artifacts.

Fold outputs are read back from MLflow, not from the fold's disk: a fold may
have run on another machine that shares only the tracking server. The
assembly, scoring and checks are pref_core.evaluate.oof and pref_core.predict.submission.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
from prefect import task

from arena_pref.tasks import tracking, workspace
from arena_pref.tasks.preparation import TASK_DEFAULTS, PreparedInputs
from pref_core.config.schema import RunConfig
from pref_core.data.labels import LABEL_COLUMNS, TURN_COLUMNS
from pref_core.evaluate.oof import OOFScores, assemble_oof, oof_figures, score_oof, text_lengths
from pref_core.evaluate.postprocess import (
    ROW_KIND_COLUMN,
    RULES_FILE,
    apply_to_rows,
    fit_oof_table,
    postprocess_metrics,
    postprocess_params,
    row_kinds,
)
from pref_core.predict.submission import (
    average_fold_predictions,
    class_prior,
    fill_missing_with_prior,
    test_file_ids,
    validate_submission,
)
from pref_core.train.result import TEST_PREDICTIONS_FILE, VAL_PREDICTIONS_FILE

LOGGER = logging.getLogger(__name__)


@dataclass
class OOFOutput:
    """What evaluate-oof found: the OOF table's path, its scores and each fold model's validation log loss."""

    oof_path: str
    scores: OOFScores
    fold_log_loss: dict[int, float]
    postprocess: Optional[dict] = None  # postprocess.json (pref_core.evaluate.postprocess); None: postprocess.mode=off
    postprocess_summary: Optional[str] = None  # one line: what post-processing changed

    @property
    def temperature(self) -> float:
        """The calibration applied to the submission and by the registered model (1.0: none)."""
        return self.scores.temperature


def _read_fold_tables(client, fold_run_ids: dict[int, str], name: str) -> dict[int, pd.DataFrame]:
    """Artifact `name` (a parquet table) of each fold run, by fold."""
    with tempfile.TemporaryDirectory() as tmp:
        return {
            fold: pd.read_parquet(client.download_artifacts(run_id, name, str(Path(tmp) / f"fold_{fold}")))
            for fold, run_id in sorted(fold_run_ids.items())
        }


@task(name="evaluate-oof", **TASK_DEFAULTS)
def evaluate_oof(
    config: RunConfig, parent_run_id: str, fold_run_ids: dict[int, str], prepared: PreparedInputs
) -> OOFOutput:
    """Join the folds' validation predictions, check coverage, compute OOF metrics, log table and plots.

    The parent's metrics are the scores (OOF, calibrated OOF, class prior, accuracy, and `fold_log_loss` at
    step k for fold k); what they were computed on (rows, the applied temperature) goes to its params."""
    client = tracking.get_client(config)
    predictions = _read_fold_tables(client, fold_run_ids, VAL_PREDICTIONS_FILE)
    parsed = pd.read_parquet(prepared.train.parsed_path, columns=["id", "label", *TURN_COLUMNS])
    oof = assemble_oof(predictions, parsed, pd.read_parquet(prepared.folds_path))
    # Each row's kind (identical answers, an empty answer, ...): what post-processing and blends read.
    texts = parsed.set_index(parsed["id"].astype(str)).loc[oof["id"]]
    oof[ROW_KIND_COLUMN] = row_kinds(texts["response_a"], texts["response_b"])
    scores = score_oof(oof, config.calibration.method)
    fold_log_loss = dict(scores.fold_log_loss)  # each fold model's validation log loss, from its predictions

    out_dir = workspace.run_dir(config, prepared.run_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    oof_path = out_dir / "oof_predictions.parquet"
    oof.to_parquet(oof_path, index=False)
    tracking.log_metrics(client, parent_run_id, scores.metrics)
    for fold, loss in fold_log_loss.items():  # one chart over the folds: step k is fold k
        tracking.log_metrics(client, parent_run_id, {"fold_log_loss": loss}, step=fold)
    tracking.log_params(client, parent_run_id, scores.params)
    client.log_artifact(parent_run_id, str(oof_path))
    lengths = text_lengths(parsed, oof["id"])
    for name, figure in oof_figures(oof, scores, fold_log_loss, lengths).items():
        client.log_figure(parent_run_id, figure, name)
    LOGGER.info(
        "OOF log loss %.4f (prior %.4f), accuracy %.3f over %d rows; temperature %.3f -> calibrated %.4f",
        scores.log_loss,
        scores.prior_log_loss,
        scores.accuracy,
        scores.n_oof,
        scores.temperature,
        scores.log_loss if scores.calibrated_log_loss is None else scores.calibrated_log_loss,
    )
    rules = _fit_postprocess(config, client, parent_run_id, oof, scores.temperature, out_dir)
    return OOFOutput(
        oof_path=str(oof_path),
        scores=scores,
        fold_log_loss=fold_log_loss,
        postprocess=rules.to_dict() if rules else None,
        postprocess_summary=rules.summary() if rules else None,
    )


def _fit_postprocess(config: RunConfig, client, run_id: str, oof: pd.DataFrame, temperature: float, out_dir: Path):
    """postprocess.mode=auto: the per-kind rules fitted on the calibrated OOF rows, logged as postprocess.json
    with their metrics; None when off."""
    if config.postprocess.mode == "off":
        return None
    rules = fit_oof_table(
        oof, temperature, min_rows=config.postprocess.min_rows, near_identical=config.postprocess.near_identical
    )
    path = out_dir / RULES_FILE
    path.write_text(json.dumps(rules.to_dict(), indent=2), encoding="utf-8")
    client.log_artifact(run_id, str(path))
    tracking.log_metrics(client, run_id, postprocess_metrics(rules))
    tracking.log_params(client, run_id, postprocess_params(rules))
    LOGGER.info("%s", rules.summary())
    return rules


def _fill_rejected_with_prior(submission: pd.DataFrame, prepared: PreparedInputs) -> tuple[pd.DataFrame, list[str]]:
    """Rows that ingest rejected (allowed by data.max_bad_fraction) get the training class prior, loudly,
    instead of going missing."""
    all_ids = test_file_ids(prepared.test.source)
    prior = class_prior(pd.read_parquet(prepared.train.parsed_path, columns=["label"])["label"])
    full, filled = fill_missing_with_prior(submission, all_ids, prior)
    LOGGER.warning(
        "submission: %d test rows were rejected at ingest (see %s); they get the class prior %s",
        len(filled),
        prepared.test.rejected_path,
        [round(float(p), 4) for p in prior],
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
    frames = list(_read_fold_tables(client, fold_run_ids, TEST_PREDICTIONS_FILE).values())
    submission = average_fold_predictions(frames, test_ids, oof.temperature)
    if oof.postprocess is not None:  # the rules learned on OOF, applied as the registered model and bundle apply them
        test = pd.read_parquet(prepared.test.parsed_path, columns=["id", "response_a", "response_b"])
        submission[list(LABEL_COLUMNS)] = apply_to_rows(
            oof.postprocess, test["response_a"], test["response_b"], submission[list(LABEL_COLUMNS)].to_numpy()
        )
    if prepared.test.n_rejected:
        submission, test_ids = _fill_rejected_with_prior(submission, prepared)
        tracking.log_params(client, parent_run_id, {"n_test_prior_filled": prepared.test.n_rejected})
    validate_submission(submission, test_ids)
    dest = workspace.run_dir(config, prepared.run_key) / "submission.csv"
    submission.to_csv(dest, index=False)
    client.log_artifact(parent_run_id, str(dest))
    LOGGER.info("submission with %d rows written to %s", len(submission), dest)
    return str(dest)
