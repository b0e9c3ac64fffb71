"""Fold training tasks: open the fold's MLflow run, train one fold, log its outputs, launch fold processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from prefect import Task, get_run_logger, task
from prefect.client.orchestration import get_client as get_prefect_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.settings import get_current_settings
from prefect.states import Completed, Failed, Pending

from pref_core import training as core_training
from pref_core.config import RunConfig
from pref_core.labels import LABEL_COLUMNS
from tasks import distillation, tracking, workspace
from tasks.preparation import TASK_DEFAULTS, PreparedInputs

LOGGER = logging.getLogger(__name__)


class FoldFailedError(RuntimeError):
    """A fold's training failed; the message names the fold and where to look."""


@dataclass
class FoldOutput:
    fold: int
    mlflow_run_id: str
    fold_dir: str
    adapter_dir: str
    val_predictions: str
    test_predictions: Optional[str]
    metrics: dict
    reused: bool = False


@task(name="open-fold-run", **TASK_DEFAULTS)
def open_fold_run(config: RunConfig, parent_run_id: str, fold: int) -> str:
    """Create the fold's nested MLflow run up front, so retries and remote workers log into the same one."""
    client = tracking.get_client(config)
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        run_name=f"fold-{fold}",
        tags={tracking.TAG_PARENT: parent_run_id, tracking.TAG_FOLD: str(fold), tracking.TAG_KIND: "fold"},
    )
    tracking.log_params(client, run.info.run_id, {**config.flat(), "fold": fold})
    return run.info.run_id


def _select_fold(dataset, folds_path: str, fold: int):
    table = pd.read_parquet(folds_path)
    val_ids = set(table.loc[table["fold"] == fold, "id"].astype(str))
    is_val = np.fromiter((i in val_ids for i in dataset["id"]), dtype=bool, count=len(dataset))
    return dataset.select(np.flatnonzero(~is_val)), dataset.select(np.flatnonzero(is_val))


def _predict_test(config: RunConfig, adapter_dir: Path, base_model: str, tokens_path: str, dest: Path) -> Path:
    from pref_core.inference import predict
    from pref_core.modeling import load_preference_model
    from pref_core.tokenization import load_token_cache

    from pref_core.training import torch_cpu_threads

    dataset = load_token_cache(tokens_path)
    with torch_cpu_threads(config.train.cpu_threads):
        model, tokenizer = load_preference_model(config, adapter_dir, name_or_path=base_model)
        probs = predict(
            model, dataset, batch_size=config.train.eval_batch_size, tta_swap=config.train.tta_swap,
            pad_token_id=tokenizer.pad_token_id, progress=True,
        )
    frame = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    frame.insert(0, "id", list(dataset["id"]))
    frame.to_parquet(dest, index=False)
    return dest


@task(name="fit-fold", **TASK_DEFAULTS)
def fit_fold(config: RunConfig, fold: int, mlflow_run_id: str, prepared: PreparedInputs, force: bool = False) -> FoldOutput:
    """Train (or resume, or reuse) one fold, predict the test set with it, and log everything to its run."""
    from pref_core.tokenization import load_token_cache

    logger = get_run_logger()
    client = tracking.get_client(config)
    folder = workspace.fold_dir(config, prepared.run_key, fold)
    marker = folder / "result.json"
    if force and folder.exists():
        shutil.rmtree(folder)
    attempt = int(client.get_run(mlflow_run_id).data.tags.get("arena_pref.attempt", "0")) + 1
    tracking.set_tags(client, mlflow_run_id, {
        "arena_pref.attempt": attempt, "arena_pref.fold_dir": folder,
        "arena_pref.host": socket.gethostname(), "arena_pref.pid": os.getpid(),
    })

    if marker.exists():
        logger.info("fold %d: finished earlier in %s, reusing it (pass force=True to retrain)", fold, folder)
        output = FoldOutput(**json.loads(marker.read_text()))
        output.mlflow_run_id, output.reused = mlflow_run_id, True
        tracking.set_tags(client, mlflow_run_id, {"arena_pref.reused": "true"})
    else:
        folder.mkdir(parents=True, exist_ok=True)
        train_ds, val_ds = _select_fold(load_token_cache(prepared.train_tokens.path), prepared.folds_path, fold)
        if prepared.extra_tokens:  # extra rows train every fold and are never validated on
            from datasets import concatenate_datasets

            train_ds = concatenate_datasets([train_ds, load_token_cache(prepared.extra_tokens.path)])
        teacher = distillation.teacher_frame(config, fold, prepared.train_hash, val_ds["id"], client)
        if teacher is not None:
            from pref_core.data import attach_teacher_probs

            train_ds = attach_teacher_probs(train_ds, teacher)
        logger.info("fold %d: %d train rows (%d extra), %d validation rows", fold, len(train_ds),
                    prepared.extra.n_kept if prepared.extra else 0, len(val_ds))
        result = core_training.train_fold(
            config, train_ds, val_ds, folder,
            callbacks=[tracking.MlflowFoldCallback(client, mlflow_run_id)], name_or_path=prepared.base_model,
        )
        if result.resumed_from:
            logger.info("fold %d: resumed from %s", fold, result.resumed_from)
            tracking.set_tags(client, mlflow_run_id, {"arena_pref.resumed_from": result.resumed_from})
        if config.train.predict_train_rows:  # the per-fold soft labels of a student (distill.teacher_run)
            distillation.predict_train_rows(config, result.adapter_dir, prepared.base_model, train_ds,
                                            folder / distillation.TRAIN_PREDICTIONS)
        test_predictions = None
        if prepared.test_tokens:
            test_predictions = str(
                _predict_test(config, result.adapter_dir, prepared.base_model, prepared.test_tokens.path,
                              folder / "test_predictions.parquet")
            )
        output = FoldOutput(
            fold=fold, mlflow_run_id=mlflow_run_id, fold_dir=str(folder), adapter_dir=str(result.adapter_dir),
            val_predictions=str(result.val_predictions_path), test_predictions=test_predictions,
            metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        )
        marker.write_text(json.dumps(asdict(output), indent=2))

    try:
        tracking.log_metrics(client, mlflow_run_id, output.metrics)
        client.log_artifacts(mlflow_run_id, output.adapter_dir, artifact_path="adapter")
        client.log_artifact(mlflow_run_id, output.val_predictions)
        if output.test_predictions:
            client.log_artifact(mlflow_run_id, output.test_predictions)
        if (Path(output.fold_dir) / distillation.TRAIN_PREDICTIONS).is_file():
            client.log_artifact(mlflow_run_id, str(Path(output.fold_dir) / distillation.TRAIN_PREDICTIONS))
        client.set_terminated(mlflow_run_id, "FINISHED")
    except Exception as err:
        raise FoldFailedError(
            f"fold {fold}: training finished but logging to MLflow ({client.tracking_uri}) failed: {err}. "
            f"Nothing is lost: the adapter is in {output.adapter_dir} and the validation predictions in "
            f"{output.val_predictions}; rerun the same command to log them (the fold is reused, not retrained)."
        ) from err
    logger.info("fold %d: val_log_loss=%.4f", fold, output.metrics.get("val_log_loss", float("nan")))
    return output


def _fold_flow_parameters(config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool) -> dict:
    return {
        "config": config.model_dump(mode="json"),
        "fold": fold,
        "mlflow_run_id": mlflow_run_id,
        "train_hash": train_hash,
        "force": force,
    }


def _create_linked_flow_run(flow, parameters: dict, name: str, dynamic_key: str):
    """Create a flow run that the Prefect UI shows as a subflow of the current task.

    The run is then executed by a separate `python -m prefect.flow_engine`
    process; the link goes through a placeholder task run created by API, the
    way `run_deployment(as_subflow=True)` does it.
    """
    task_ctx = TaskRunContext.get()
    flow_ctx = FlowRunContext.get()
    parent_flow_run_id = task_ctx.task_run.flow_run_id if task_ctx else flow_ctx.flow_run.id
    with get_prefect_client(sync_client=True) as client:
        placeholder = client.create_task_run(
            task=Task(name=name, fn=lambda: None), flow_run_id=parent_flow_run_id,
            dynamic_key=dynamic_key, task_inputs={}, state=Pending(),
        )
        flow_run = client.create_flow_run(flow, parameters=parameters, parent_task_run_id=placeholder.id, name=name)
    return flow_run, placeholder


def _prefect_child_env() -> dict[str, str]:
    """Settings a child process needs to talk to the same Prefect API as this one.

    Without a configured server Prefect runs a temporary one inside this
    process; the child must use it too rather than start a second one.
    """
    settings = get_current_settings()
    env = {k: str(v) for k, v in settings.to_environment_variables(exclude_unset=True).items()}
    if not settings.api.url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        if server.running:
            env["PREFECT_API_URL"] = server.api_url
    return env


def _retry_killed_fold(task, task_run, state) -> bool:
    """Retry a fold whose process was killed (OOM killer, preemption, SIGKILL): it resumes from its checkpoint."""
    try:
        state.result()
    except FoldFailedError as err:
        return "killed by signal" in str(err)
    except Exception:
        return False
    return False


@task(name="train-fold-process", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_killed_fold, **TASK_DEFAULTS)
def run_fold_in_subprocess(config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool = False) -> str:
    """Run the `train-fold` flow for one fold in a fresh process (its CUDA memory is freed when it exits)."""
    from flows.train_fold import train_fold

    logger = get_run_logger()
    attempt = (TaskRunContext.get().task_run.run_count or 1)
    name = f"fold-{fold}" if attempt <= 1 else f"fold-{fold}-attempt-{attempt}"
    flow_run, placeholder = _create_linked_flow_run(
        train_fold, _fold_flow_parameters(config, fold, mlflow_run_id, train_hash, force and attempt <= 1),
        name=name, dynamic_key=f"{name}-{mlflow_run_id[:8]}",
    )
    env = {
        **os.environ,
        **_prefect_child_env(),
        "PREFECT__FLOW_RUN_ID": str(flow_run.id),
        # The Trainer must never open MLflow runs of its own.
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    }
    logger.info("fold %d: starting process for flow run %s (%s)", fold, flow_run.name, flow_run.id)
    proc = subprocess.run(
        [sys.executable, "-m", "prefect.flow_engine", "flows.train_fold:train_fold"],
        env=env, cwd=str(tracking.PROJECT_ROOT),
    )
    with get_prefect_client(sync_client=True) as client:
        ok = proc.returncode == 0
        client.set_task_run_state(placeholder.id, Completed() if ok else Failed(), force=True)
        if not ok:
            final = client.read_flow_run(flow_run.id)
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
            if final.state is not None and not final.state.is_final():
                client.set_flow_run_state(flow_run.id, Failed(message=how), force=True)
            raise FoldFailedError(
                f"fold {fold} failed ({how}) in flow run '{flow_run.name}' ({flow_run.id}); "
                f"MLflow run {mlflow_run_id}. See that flow run's logs; rerunning resumes from its last checkpoint."
            )
    return str(flow_run.id)


@task(name="train-fold-deployment", **TASK_DEFAULTS)
def run_fold_deployment(config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool = False) -> str:
    """Run one fold through the `train-fold` deployment (a GPU worker) and wait for it."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    logger.info("fold %d: submitting to deployment %s", fold, config.cv.fold_deployment)
    flow_run = run_deployment(
        config.cv.fold_deployment,
        parameters=_fold_flow_parameters(config, fold, mlflow_run_id, train_hash, force),
        flow_run_name=f"fold-{fold}",
        timeout=None,
        poll_interval=2,
    )
    if flow_run.state is None or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        message = (flow_run.state.message if flow_run.state else "") or ""
        raise FoldFailedError(
            f"fold {fold} failed in flow run '{flow_run.name}' ({flow_run.id}) of deployment "
            f"{config.cv.fold_deployment}: {state}. {message} MLflow run {mlflow_run_id}."
        )
    return str(flow_run.id)


def raise_failed_folds(futures) -> None:
    """After all fold runs ended: one error naming every failed fold (not just the first)."""
    errors = []
    for future in futures:
        try:
            future.result()
        except Exception as err:
            errors.append(str(err))
    if errors:
        raise FoldFailedError(f"{len(errors)} fold(s) failed:\n" + "\n".join(errors))
