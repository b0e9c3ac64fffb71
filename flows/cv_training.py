"""The `cv-training` flow: ingest -> tokenize-and-cache -> folds -> train-fold x K -> OOF -> registry -> submission."""

from __future__ import annotations

import contextlib
from typing import Optional

from prefect import flow
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from arena_pref.flows.preparation import prepare_inputs
from arena_pref.flows.train_fold import train_fold
from arena_pref.tasks import (
    artifacts,
    evaluation,
    flow_checks,
    fold_launcher,
    pseudo_labels,
    registry,
    report_page,
    runs,
    stopping,
    training,
)
from pref_core.config.schema import RunConfig
from pref_core.progress import console_note
from pref_core.train.devices import DeviceSlots, plan_device_slots


@flow(name="cv-training", log_prints=True)
def cv_training(
    config: Optional[RunConfig] = None,
    config_path: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    fold_execution: Optional[str] = None,
    force: bool = False,
    train_csv: Optional[str] = None,
    test_csv: Optional[str] = None,
    n_folds: Optional[int] = None,
    model_name_or_path: Optional[str] = None,
    learning_rate: Optional[float] = None,
    num_epochs: Optional[float] = None,
) -> runs.CVTrainingResult:
    """K-fold LoRA fine-tuning with out-of-fold evaluation, tracked in one parent MLflow run.

    Give either `config` or `config_path` (+ `overrides`, `key=value` strings). The typed parameters after
    `force` (a form in the Prefect UI) override their config fields, after `overrides`. Missing or bad data ends
    the run in its preflight (state message: the reason; no MLflow run); a finished run's state message holds
    the OOF log loss and the registry's decision.

    Args:
        config: A whole run config (Python callers); leave empty in the form and give `config_path`.
        config_path: YAML recipe, e.g. configs/tiny.yaml (a path here, in the project folder, or a shipped recipe).
        overrides: Config overrides as key=value strings, e.g. train.learning_rate=1e-4 (applied in order).
        fold_execution: cv.execution for this run: in_process, subprocess or deployment (empty: the recipe's).
        force: Retrain folds that an earlier run with the same config and data already finished.
        train_csv: data.train_csv: the Kaggle-format train.csv (empty: the recipe's).
        test_csv: data.test_csv: a Kaggle-format test.csv to write a submission for (empty: none or the recipe's).
        n_folds: cv.n_folds: number of prompt-grouped folds (empty: the recipe's).
        model_name_or_path: model.name_or_path: the base model, a Hub id or a folder (empty: the recipe's).
        learning_rate: train.learning_rate: peak learning rate of the LoRA weights (empty: the recipe's).
        num_epochs: train.num_epochs: passes over each fold's training rows (empty: the recipe's).
    """
    config = runs.resolve_config(
        config,
        config_path,
        overrides,
        fold_execution,
        fields={
            "data.train_csv": train_csv,
            "data.test_csv": test_csv,
            "cv.n_folds": n_folds,
            "model.name_or_path": model_name_or_path,
            "train.learning_rate": learning_rate,
            "train.num_epochs": num_epochs,
        },
    )
    stopping.reset()  # what this run creates, for a Ctrl-C to stop (arena_pref.tasks.stopping)
    stopping.record_flow_run(flow_run.get_id())
    try:
        flow_checks.check_inputs(config)
    except flow_checks.PREFLIGHT_ERRORS as err:  # before any MLflow run exists: nothing left behind
        return Failed(message=f"preflight: {err}", data=err)
    parent_run_id = runs.open_parent_run(config, flow_run.get_name() or "")
    try:
        prepared = prepare_inputs(config)
        runs.log_inputs(config, parent_run_id, prepared)
        name = runs.name_run(config, parent_run_id, prepared.run_key)
        fold_run_ids = {k: training.open_fold_run(config, parent_run_id, k, name) for k in config.cv.fold_indices()}
        if config.distill.pseudo_from is not None:  # every teacher fold over one base load, before the folds
            pseudo_labels.teacher_pseudo_labels(config, prepared, list(fold_run_ids))
        _train_folds(config, fold_run_ids, prepared, force)
        oof = evaluation.evaluate_oof(config, parent_run_id, fold_run_ids, prepared)
        submission = evaluation.make_submission(config, parent_run_id, fold_run_ids, prepared, oof)
        registered = registry.register_model(config, parent_run_id, fold_run_ids, prepared, oof)
        artifacts.publish_summary(config, parent_run_id, fold_run_ids, oof, registered, submission)
        report = report_page.publish_report(config, parent_run_id, fold_run_ids, prepared, oof, registered)
    except BaseException as err:
        # Ctrl-C: KILLED (arena_pref.interruption ends the folds' runs and the flow runs the same way)
        runs.close_run(config, parent_run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    runs.close_run(config, parent_run_id, "FINISHED")
    result = runs.CVTrainingResult(
        parent_run_id=parent_run_id,
        fold_run_ids=fold_run_ids,
        run_key=prepared.run_key,
        oof=oof,
        registration=registered,
        submission_path=submission,
        rows=prepared.counts(),
        report_path=str(report) if report else None,
    )
    # The flow run's state message (what `prefect deployment run ... --watch` ends with); callers get `result`.
    return Completed(message=runs.final_message(result), data=result)


def _train_folds(config: RunConfig, fold_run_ids: dict[int, str], prepared, force: bool) -> None:
    """Every fold trained by cv.execution's way; all folds run even if one fails, the errors come together.

    Folds an identical earlier run finished (unless `force`) are reused here, in this process, and said so: no
    fold process or deployment run starts for them, so a rerun whose folds are all done takes seconds."""
    progress = artifacts.start_progress(len(fold_run_ids))
    reused = [] if force else training.finished_folds(config, prepared.run_key, fold_run_ids)
    if reused:
        console_note(
            f"reusing fold{'s' if len(reused) > 1 else ''} {', '.join(map(str, reused))}: finished by an identical "
            f"earlier run (same run key {prepared.run_key[:12]}; --force retrains)"
        )
        for done, k in enumerate(reused, start=1):
            training.fit_fold(config, k, fold_run_ids[k], prepared, force=False)
            artifacts.advance_progress(progress, done, len(fold_run_ids))
        fold_run_ids = {k: run_id for k, run_id in fold_run_ids.items() if k not in reused}
        if not fold_run_ids:
            return
    if config.cv.execution == "in_process":  # on the inputs prepared above: no subflow or re-preparation
        for done, (k, run_id) in enumerate(fold_run_ids.items(), start=1):
            training.fit_fold(config, k, run_id, prepared, force=force)
            artifacts.advance_progress(progress, done, len(fold_run_ids))
        return
    if config.cv.execution == "deployment":  # all folds at once; each GPU worker takes one at a time
        futures = [
            fold_launcher.run_fold_deployment.submit(config, k, run_id, prepared.train_hash, force)
            for k, run_id in fold_run_ids.items()
        ]
        _wait(futures, progress)
        return
    # subprocess: cv.max_parallel fold processes at once, one device slot each; a fold starts when a
    # worker (and so a device) frees up.
    slots = DeviceSlots(plan_device_slots(config.cv.max_parallel, config.train.num_processes))
    with ThreadPoolTaskRunner(max_workers=len(slots)) as runner, _fold_processes_stopped_on_interrupt():
        futures = [
            runner.submit(
                fold_launcher.run_fold_in_subprocess,
                parameters=dict(
                    fold_flow=train_fold,
                    config=config,
                    fold=k,
                    mlflow_run_id=run_id,
                    train_hash=prepared.train_hash,
                    force=force,
                    slots=slots,
                ),
            )
            for k, run_id in fold_run_ids.items()
        ]
        _wait(futures, progress)


@contextlib.contextmanager
def _fold_processes_stopped_on_interrupt():
    """On Ctrl-C, end the fold processes before the task runner waits for its threads (each waits for its process)."""
    try:
        yield
    except KeyboardInterrupt:
        stopping.request_stop()
        stopping.terminate_fold_processes()
        raise


def _wait(futures, progress) -> None:
    for done, _ in enumerate(as_completed(futures), start=1):
        artifacts.advance_progress(progress, done, len(futures))
    fold_launcher.raise_failed_folds(futures)
