"""The `cv-training` flow: ingest -> tokenize-and-cache -> folds -> train-fold x K -> OOF -> registry -> submission."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.preparation import prepare_inputs
from flows.train_fold import train_fold
from pref_core.config import RunConfig
from tasks import evaluation, registry, runs, training


@flow(name="cv-training", log_prints=True)
def cv_training(config: RunConfig, force: bool = False) -> dict:
    """K-fold LoRA fine-tuning with out-of-fold evaluation, tracked in one parent MLflow run.

    `force` retrains folds that an earlier run with the same config and data finished.
    """
    parent_run_id = runs.open_parent_run(config, flow_run.get_name() or "")
    try:
        prepared = prepare_inputs(config)
        runs.log_inputs(config, parent_run_id, prepared)
        folds = config.cv.folds if config.cv.folds is not None else list(range(config.cv.n_folds))
        fold_run_ids = {k: training.open_fold_run(config, parent_run_id, k) for k in folds}
        for k, run_id in fold_run_ids.items():
            if config.cv.execution == "subprocess":
                training.run_fold_in_subprocess(config, k, run_id, prepared.train_hash, force)
            else:
                train_fold.with_options(flow_run_name=f"fold-{k}")(config, k, run_id, prepared.train_hash, force)
        oof = evaluation.evaluate_oof(config, parent_run_id, fold_run_ids, prepared)
        submission = evaluation.make_submission(config, parent_run_id, fold_run_ids, prepared)
        registered = registry.register_model(config, parent_run_id, fold_run_ids, prepared, oof)
    except BaseException:
        runs.close_run(config, parent_run_id, "FAILED")
        raise
    runs.close_run(config, parent_run_id, "FINISHED")
    return {
        "parent_run_id": parent_run_id,
        "fold_run_ids": fold_run_ids,
        "metrics": oof.metrics,
        "fold_log_loss": oof.fold_log_loss,
        "oof_path": oof.oof_path,
        "submission_path": submission,
        "run_key": prepared.run_key,
        "model_uri": registered.model_uri,
        "promoted": registered.promoted,
        "promotion": registered.reason,
        "rows": prepared.counts(),
    }
