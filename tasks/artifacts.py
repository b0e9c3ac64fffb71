"""Prefect artifacts of a CV run: a progress bar that moves as folds finish, a per-fold metrics table and a
markdown summary (fold table, OOF and calibrated OOF, class prior, the registry decision, links to MLflow)."""

from __future__ import annotations

import logging
from typing import Optional, Sequence
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from arena_pref.tasks import tracking
from arena_pref.tasks.evaluation import OOFOutput
from arena_pref.tasks.preparation import TASK_DEFAULTS
from arena_pref.tasks.registry import RegistrationOutput
from pref_core.config.schema import RunConfig

LOGGER = logging.getLogger(__name__)

# Artifact keys: lowercase letters, digits and dashes (Prefect's rule); the latest of each key shows on
# the Artifacts page, every version stays attached to its flow run.
PROGRESS_KEY, TABLE_KEY, SUMMARY_KEY = "cv-training-progress", "cv-training-folds", "cv-training-summary"


def decision_in_words(
    model_uri: str, promoted: bool, reason: str, registered: bool = True, warnings: Sequence[str] = ()
) -> str:
    """The registry's decision as a sentence (the first version becoming @champion is not a failure)."""
    if not registered:
        return f"{reason}; its model is {model_uri}"
    if warnings:
        return f"{model_uri} registered WITHOUT an alias (@challenger, @champion unchanged): {'; '.join(warnings)}"
    if promoted:
        if reason == "no champion yet":
            return f"{model_uri} is now @champion (the first version registered)"
        return f"{model_uri} is now @champion: {reason}"
    return f"{model_uri} is @challenger, @champion unchanged: {reason}"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A browser link to an MLflow run on a server; the bare run id for a file store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking.run_url(tracking_uri, experiment_id, run_id)
    return f"run `{run_id}` in `{tracking_uri}`"


def start_progress(n_folds: int) -> Optional[UUID]:
    """A progress artifact at 0 %; None when the artifact cannot be created (it is a view, not a result)."""
    try:
        return create_progress_artifact(0.0, key=PROGRESS_KEY, description=f"folds finished: 0 of {n_folds}")
    except Exception as err:  # noqa: BLE001 (a view, not a result: it never fails the run)
        LOGGER.warning("no progress artifact: %s", err)
        return None


def advance_progress(artifact_id: Optional[UUID], done: int, n_folds: int) -> None:
    if artifact_id is None:
        return
    try:
        update_progress_artifact(
            artifact_id, 100.0 * done / max(n_folds, 1), description=f"folds finished: {done} of {n_folds}"
        )
    except Exception as err:  # noqa: BLE001 (a view, not a result: it never fails the run)
        LOGGER.warning("progress artifact not updated: %s", err)


def fold_rows(oof: OOFOutput, fold_run_ids: dict[int, str], run_links: dict[int, str]) -> list[dict]:
    scores = oof.scores
    return [
        {
            "fold": k,
            "val_log_loss": round(oof.fold_log_loss[k], 5),
            "val_accuracy": round(scores.fold_accuracy.get(k, float("nan")), 4),
            "rows": scores.fold_rows.get(k),
            "mlflow_run": run_links[k],
        }
        for k in sorted(fold_run_ids)
    ]


def summary_markdown(
    oof: OOFOutput, rows: list[dict], decision: str, parent_link: str, submission: Optional[str]
) -> str:
    scores = oof.scores
    lines = [
        "# cv-training",
        "",
        "| fold | val log loss | val accuracy | rows | MLflow run |",
        "| ---: | ---: | ---: | ---: | --- |",
        *[
            f"| {r['fold']} | {r['val_log_loss']:.4f} | {r['val_accuracy']:.3f} | {r['rows']} | {r['mlflow_run']} |"
            for r in rows
        ],
        "",
        f"- **OOF log loss**: {scores.log_loss:.4f} (accuracy {scores.accuracy:.3f}, {scores.n_oof} rows)",
    ]
    if scores.calibrated_log_loss is not None:
        lines.append(
            f"- **calibrated OOF log loss**: {scores.calibrated_log_loss:.4f} (temperature {scores.temperature:.3f})"
        )
    if oof.postprocess_summary:
        lines.append(f"- **{oof.postprocess_summary.split(': ', 1)[0]}**: {oof.postprocess_summary.split(': ', 1)[1]}")
    lines += [
        f"- **class prior log loss**: {scores.prior_log_loss:.4f}",
        f"- **registry**: {decision}",
        f"- **MLflow parent run**: {parent_link}",
    ]
    if submission:
        lines.append(f"- **submission**: `{submission}`")
    return "\n".join(lines) + "\n"


@task(name="publish-summary", **TASK_DEFAULTS)
def publish_summary(
    config: RunConfig,
    parent_run_id: str,
    fold_run_ids: dict[int, str],
    oof: OOFOutput,
    registered: RegistrationOutput,
    submission: Optional[str],
) -> str:
    """The fold table and the markdown summary as Prefect artifacts of this flow run; returns the markdown."""
    uri = tracking.resolve_tracking_uri(config)
    experiment_id = tracking.get_client(config).get_run(parent_run_id).info.experiment_id
    links = {k: run_link(uri, experiment_id, run_id) for k, run_id in fold_run_ids.items()}
    rows = fold_rows(oof, fold_run_ids, links)
    decision = registered.in_words()
    markdown = summary_markdown(oof, rows, decision, run_link(uri, experiment_id, parent_run_id), submission)
    create_table_artifact(rows, key=TABLE_KEY, description="per-fold validation metrics")
    create_markdown_artifact(markdown, key=SUMMARY_KEY, description="OOF scores, calibration and the registry decision")
    return markdown
