"""The run's report page: a task that writes report.html and run_summary.json into the run folder and logs both
to the parent MLflow run (the UI shows the page inline, under Artifacts -> report), and what `arena-pref report`
reads back (pref_core.evaluate.report.RunSummary)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from prefect import task

from arena_pref.tasks import tracking, workspace
from arena_pref.tasks.evaluation import OOFOutput
from arena_pref.tasks.preparation import TASK_DEFAULTS, PreparedInputs
from arena_pref.tasks.registry import RegistrationOutput
from pref_core.config.schema import RunConfig

LOGGER = logging.getLogger(__name__)

REPORT_DIR = "report"  # the parent run's artifact folder of the page and its summary
REPORT_FILE, SUMMARY_FILE = "report.html", "run_summary.json"
OOF_FILE = "oof_predictions.parquet"  # evaluate_oof logs it at the root of the parent run's artifacts


def build_run_summary(
    config: RunConfig,
    client,
    parent_run_id: str,
    fold_run_ids: dict[int, str],
    prepared: PreparedInputs,
    oof: OOFOutput,
    registered: RegistrationOutput,
):
    """The run's RunSummary: name, scores, folds (with their device slot), overrides, flat config, facts, the
    registry decision and its warnings."""
    from arena_pref.tasks.runs import recipe_overrides
    from pref_core.evaluate.report import FoldScore, RunScores, RunSummary

    scores = oof.scores
    run = client.get_run(parent_run_id)
    folds = []
    for fold, run_id in sorted(fold_run_ids.items()):
        device = client.get_run(run_id).data.tags.get(tracking.TAG_DEVICE)
        folds.append(
            FoldScore(
                fold=fold,
                log_loss=float(oof.fold_log_loss[fold]),
                accuracy=scores.fold_accuracy.get(fold),
                rows=scores.fold_rows.get(fold),
                device=device,
            )
        )
    recipe, overrides = recipe_overrides(config)
    facts = {
        "recipe": recipe or "none (a config built in code)",
        "base model": prepared.base_model,
        "run key": prepared.run_key,
        "train data": f"{prepared.train_hash[:12]} ({prepared.train.n_kept} rows)",
        "MLflow run": parent_run_id,
    }
    return RunSummary(
        name=run.info.run_name or parent_run_id,
        scores=RunScores.from_metrics({**scores.metrics, **scores.params, "temperature": scores.temperature}),
        folds=tuple(folds),
        overrides=overrides,
        config=config.flat(),
        facts=facts,
        decision=registered.in_words(),
        warnings=registered.warnings,
        run_id=parent_run_id,
    )


@task(name="publish-report", **TASK_DEFAULTS)
def publish_report(
    config: RunConfig,
    parent_run_id: str,
    fold_run_ids: dict[int, str],
    prepared: PreparedInputs,
    oof: OOFOutput,
    registered: RegistrationOutput,
) -> Optional[Path]:
    """report.html and run_summary.json in the run folder and on the parent run (artifacts/report/); returns the
    page's path, None when the page could not be made (logged: a page never fails a finished run)."""
    try:
        return _publish(config, parent_run_id, fold_run_ids, prepared, oof, registered)
    except Exception as err:  # noqa: BLE001 (a view of the results, not a result)
        LOGGER.warning("no report page: %s", err)
        return None


def _publish(config, parent_run_id, fold_run_ids, prepared, oof, registered) -> Path:
    import pandas as pd

    from pref_core.data.labels import TURN_COLUMNS
    from pref_core.evaluate.report import render_run_report

    started = time.perf_counter()
    client = tracking.get_client(config)
    out_dir = workspace.run_dir(config, prepared.run_key)
    page_path, summary_path = out_dir / REPORT_FILE, out_dir / SUMMARY_FILE
    summary = build_run_summary(config, client, parent_run_id, fold_run_ids, prepared, oof, registered)
    summary_path.write_text(json.dumps(summary.to_dict(), indent=1, default=str), encoding="utf-8")
    texts = pd.read_parquet(prepared.train.parsed_path, columns=["id", *TURN_COLUMNS])
    page = render_run_report(summary, pd.read_parquet(oof.oof_path), texts)
    page_path.write_text(page, encoding="utf-8")
    for path in (page_path, summary_path):
        client.log_artifact(parent_run_id, str(path), artifact_path=REPORT_DIR)
    LOGGER.info("report page %s (%.1f s)", page_path, time.perf_counter() - started)
    return page_path
