"""Fold training tasks: open the fold's MLflow run, train one fold, log its outputs, launch fold processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pandas as pd
from prefect import Flow, get_run_logger, task
from prefect.client.orchestration import get_client as get_prefect_client
from prefect.context import TagsContext, TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow_in_subprocess
from prefect.settings import get_current_settings
from prefect.states import Failed

from pref_core.errors import UserError
from pref_core.data import fold_rows
from pref_core.train.fold import FoldOutOfMemoryError, fine_tune_fold
from pref_core.train.result import RESULT_FILE, FoldResult
from pref_core.config.schema import RunConfig
from pref_core.progress import CONSOLE_FD_ENV, CONSOLE_PATH_ENV, FoldProgressCallback, console_child_env
from pref_core.train.devices import DEVICE_SLOT_ENV, DeviceSlots, slot_environment
from arena_pref.tasks import resources
from arena_pref.tasks import distillation, tracking, workspace
from arena_pref.tasks.preparation import TASK_DEFAULTS, PreparedInputs

LOGGER = logging.getLogger(__name__)

TAG_DEVICE = "arena_pref.device"


class FoldFailedError(UserError, RuntimeError):
    """A fold's training failed; the message names the fold and where to look."""


class FoldProcessKilledError(FoldFailedError):
    """A fold's process was ended by a signal (OOM killer, preemption, SIGKILL): retried, it resumes."""


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
    tracking.log_config(client, run.info.run_id, config)
    return run.info.run_id


def _tag_attempt(client, mlflow_run_id: str, folder: Path) -> int:
    """Count this attempt on the fold's run and say where it runs; returns the attempt number (1, 2, ...)."""
    attempt = int(client.get_run(mlflow_run_id).data.tags.get("arena_pref.attempt", "0")) + 1
    tracking.set_tags(client, mlflow_run_id, {
        "arena_pref.attempt": attempt, "arena_pref.fold_dir": folder,
        "arena_pref.host": socket.gethostname(), "arena_pref.pid": os.getpid(),
        # What this process was given (cv.max_parallel), and so which GPU it trained on.
        "arena_pref.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "arena_pref.device_slot": os.environ.get(DEVICE_SLOT_ENV, ""),
    })
    return attempt


@task(name="fit-fold", **TASK_DEFAULTS)
def fit_fold(config: RunConfig, fold: int, mlflow_run_id: str, prepared: PreparedInputs, force: bool = False) -> FoldResult:
    """Train (or resume, or reuse) one fold, predict the test set with it, and log everything to its run."""
    logger = get_run_logger()
    client = tracking.get_client(config)
    folder = workspace.fold_dir(config, prepared.run_key, fold)
    marker = folder / RESULT_FILE  # the finished fold's result
    if force and folder.exists():
        shutil.rmtree(folder)
    attempt = _tag_attempt(client, mlflow_run_id, folder)
    if marker.exists():
        logger.info("fold %d: finished earlier in %s, reusing it (pass force=True to retrain)", fold, folder)
        result = replace(FoldResult.load(marker), reused=True)
        tracking.set_tags(client, mlflow_run_id, {"arena_pref.reused": "true"})
    else:
        folder.mkdir(parents=True, exist_ok=True)
        result = _train_new_fold(config, fold, mlflow_run_id, prepared, folder, client, attempt)
        result.save(marker)
    _log_fold_outputs(client, fold, mlflow_run_id, result)
    logger.info("fold %d: val_log_loss=%.4f", fold, result.metrics.get("val_log_loss", float("nan")))
    return result


def _fold_datasets(config: RunConfig, fold: int, prepared: PreparedInputs, client):
    """(train, validation, test) datasets of the fold: the split, extra rows and teacher labels (pref_core.data.fold_rows)."""
    from pref_core.text.tokenization import load_token_cache

    train_ds, val_ds = fold_rows.split_fold(load_token_cache(prepared.train_tokens.path),
                                            pd.read_parquet(prepared.folds_path), fold)
    extra_ds = load_token_cache(prepared.extra_tokens.path) if prepared.extra_tokens else None
    teacher = distillation.teacher_frame(config, fold, prepared.train_hash, val_ds["id"], client)
    train_ds = fold_rows.fold_train_set(train_ds, extra_ds, teacher)
    # The test set is predicted by the trained model in memory: no second load of the base.
    test_ds = load_token_cache(prepared.test_tokens.path) if prepared.test_tokens else None
    return train_ds, val_ds, test_ds


def _train_new_fold(config: RunConfig, fold: int, mlflow_run_id: str, prepared: PreparedInputs, folder: Path,
                    client, attempt: int) -> FoldResult:
    logger = get_run_logger()
    train_ds, val_ds, test_ds = _fold_datasets(config, fold, prepared, client)
    logger.info("fold %d: %d train rows (%d extra), %d validation rows", fold, len(train_ds),
                prepared.extra.n_kept if prepared.extra else 0, len(val_ds))
    monitor = tracking.SystemMetrics(client, mlflow_run_id, config.tracking.system_metrics_interval_s, attempt > 1)
    try:
        with monitor:
            if config.train.num_processes > 1:
                result = _train_fold_in_processes(
                    config, fold, train_ds, val_ds, prepared.test_tokens.path if prepared.test_tokens else None,
                    folder, mlflow_run_id, prepared.base_model,
                )
            else:
                result = fine_tune_fold(
                    config, train_ds, val_ds, folder,
                    callbacks=[tracking.MlflowFoldCallback(client, mlflow_run_id), FoldProgressCallback(f"fold {fold}")],
                    name_or_path=prepared.base_model, test_ds=test_ds,
                )
    except FoldOutOfMemoryError as err:
        raise _fold_failed(client, mlflow_run_id, f"fold {fold}: {err} (traceback in {folder / 'error.log'})") from None
    if result.resumed_from:
        logger.info("fold %d: resumed from %s", fold, result.resumed_from)
        tracking.set_tags(client, mlflow_run_id, {"arena_pref.resumed_from": result.resumed_from})
    return result


def _log_fold_outputs(client, fold: int, run_id: str, result: FoldResult) -> None:
    """Metrics, adapter and predictions to the fold's run, then close it; a failure here loses nothing."""
    try:
        tracking.log_metrics(client, run_id, result.metrics)
        client.log_artifacts(run_id, str(result.adapter_dir), artifact_path="adapter")
        client.log_artifact(run_id, str(result.val_predictions))
        if result.test_predictions:
            client.log_artifact(run_id, str(result.test_predictions))
        if result.train_predictions:  # the per-fold soft labels of a student (distill.teacher_run)
            client.log_artifact(run_id, str(result.train_predictions))
        client.set_terminated(run_id, "FINISHED")
    except Exception as err:
        raise FoldFailedError(
            f"fold {fold}: training finished but logging to MLflow ({client.tracking_uri}) failed: {err}. "
            f"Nothing is lost: the adapter is in {result.adapter_dir} and the validation predictions in "
            f"{result.val_predictions}; rerun the same command to log them (the fold is reused, not retrained)."
        ) from err


ERROR_TAG = "arena_pref.error"


def _fold_failed(client, mlflow_run_id: str, message: str) -> FoldFailedError:
    """Record a fold's one-line failure on its MLflow run (the parent reads it from there) and return the error."""
    try:
        tracking.set_tags(client, mlflow_run_id, {ERROR_TAG: message})
        client.set_terminated(mlflow_run_id, "FAILED")
    except Exception:  # noqa: BLE001 (the store may be what failed; the message still reaches the caller)
        LOGGER.warning("could not record the failure of MLflow run %s", mlflow_run_id, exc_info=True)
    return FoldFailedError(message)


def recorded_fold_error(config: RunConfig, mlflow_run_id: str) -> Optional[str]:
    """The one-line failure a fold process recorded on its MLflow run, if any."""
    try:
        return tracking.get_client(config).get_run(mlflow_run_id).data.tags.get(ERROR_TAG)
    except Exception:  # noqa: BLE001
        return None


def _train_fold_in_processes(
    config: RunConfig, fold: int, train_ds, val_ds, test_tokens_path: Optional[str], folder: Path,
    mlflow_run_id: str, base_model: str,
) -> FoldResult:
    """train.num_processes > 1: torchrun starts that many processes on the fold's rows (tasks/fold_worker.py).

    The rows travel through the fold folder; torchrun restarts the group (up to twice) when a process
    dies, and the new processes resume from the fold's latest checkpoint.
    """
    work = folder / "distributed"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    train_ds.save_to_disk(str(work / "train"))
    val_ds.save_to_disk(str(work / "val"))
    spec = {
        "config": config.model_dump(mode="json"), "output_dir": str(folder), "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking.resolve_tracking_uri(config), "base_model": base_model,
        "train": str(work / "train"), "val": str(work / "val"),
        # Rank 0 predicts the test rows with the trained model, as a 1-process fold does.
        "test": test_tokens_path,
    }
    (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    processes = config.train.num_processes
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "--max-restarts=2", "-m", "arena_pref.tasks.fold_worker", str(work / "spec.json")]
    LOGGER.info("fold %d: %d training processes (%s)", fold, processes, config.train.distributed)
    # A store of its own for each restart: torchrun's shared rendezvous store keeps the dead group's gloo
    # addresses, and a restarted rank that reads one fails to connect (pytorch/pytorch#135712).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    # torchrun's workers do not inherit the console descriptor; under its number they would draw into
    # whatever they opened (it was the SQLite tracking store). Their bars go to stderr, the log.
    env.pop(CONSOLE_FD_ENV, None)
    env.pop(CONSOLE_PATH_ENV, None)
    # `-m arena_pref.tasks.fold_worker` is the installed name (editable or not), found from any folder.
    proc = subprocess.run(command, cwd=str(resources.project_root()), env=env)
    if proc.returncode != 0 or not (work / RESULT_FILE).is_file():
        raise FoldFailedError(
            f"fold {fold}: its {processes} training processes failed (torchrun exit code {proc.returncode}) after "
            "torchrun's restarts; see the fold run's log. Rerunning resumes from the fold's last checkpoint."
        )
    return FoldResult.load(work / RESULT_FILE)


def _fold_flow_parameters(config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool) -> dict:
    return {
        "config": config.model_dump(mode="json"),
        "fold": fold,
        "mlflow_run_id": mlflow_run_id,
        "train_hash": train_hash,
        "force": force,
    }


def _prefect_child_env() -> dict[str, str]:
    """What a child process needs to talk to the same Prefect API as this one.

    Without a configured server Prefect runs a temporary one for this process; the child must use it too
    rather than start a second one. The client's public `api_url` is that server's address.
    """
    if get_current_settings().api.url:
        return {}
    with get_prefect_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url).rstrip("/")}


def _retry_killed_fold(task, task_run, state) -> bool:
    """Retry a fold whose process was killed (OOM killer, preemption, SIGKILL): it resumes from its checkpoint."""
    try:
        state.result()
    except FoldProcessKilledError:
        return True
    except Exception:
        return False
    return False


@task(name="train-fold-process", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_killed_fold, **TASK_DEFAULTS)
def run_fold_in_subprocess(
    fold_flow: Flow, config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool = False,
    slots: Optional[DeviceSlots] = None,
) -> str:
    """Run `fold_flow` (the `train-fold` flow, given by the calling flow) for one fold in a fresh process:
    its CUDA memory is freed when it exits. The fold's flow run is a child of this task run in the UI.

    With `slots` (cv.max_parallel), the process gets a free device slot of its own for as long as it runs.
    """
    if slots is None:
        return _run_fold_process(fold_flow, config, fold, mlflow_run_id, train_hash, force, slot=None)
    with slots.take() as slot:
        return _run_fold_process(fold_flow, config, fold, mlflow_run_id, train_hash, force, slot=slot)


def _run_fold_process(fold_flow: Flow, config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str,
                      force: bool, slot: Optional[str]) -> str:
    logger = get_run_logger()
    task_run = TaskRunContext.get().task_run
    attempt = task_run.run_count or 1
    name = f"fold-{fold}" if attempt <= 1 else f"fold-{fold}-attempt-{attempt}"
    parameters = _fold_flow_parameters(config, fold, mlflow_run_id, train_hash, force and attempt <= 1)
    with get_prefect_client(sync_client=True) as client:
        _wait_for_task_run_record(client, task_run.id)
        flow_run = client.create_flow_run(fold_flow, parameters=parameters, parent_task_run_id=task_run.id, name=name)
    env = {
        **_prefect_child_env(),
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",  # the Trainer must never open MLflow runs of its own
        **console_child_env(),  # the progress bar's way to the console
        **(slot_environment(slot) if slot is not None else {}),
    }
    if slot is not None:
        tracking.set_tags(tracking.get_client(config), mlflow_run_id, {TAG_DEVICE: slot})
    logger.info("fold %d: starting process for flow run %s (%s)%s", fold, flow_run.name, flow_run.id,
                f" on device {slot}" if slot is not None else "")
    # The parent's context stays here: the fold's run is linked through parent_task_run_id, and a
    # serialized parent flow context would carry this process's settings (its temporary API server).
    process = run_flow_in_subprocess(fold_flow, flow_run=flow_run, parameters=parameters, env=env,
                                     context={"tags_context": TagsContext.get().serialize()})
    process.join()
    with get_prefect_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    # The process exits 0 when the flow failed inside it: its run's state is what says how it went.
    if process.exitcode != 0 or state is None or not state.is_completed():
        _raise_fold_process_failed(config, fold, flow_run, mlflow_run_id, process.exitcode, state)
    return str(flow_run.id)


def _wait_for_task_run_record(client, task_run_id, timeout_s: float = 120.0) -> None:
    """Wait until the API has this task run's record. Task runs reach the server as events, written a moment
    later; a flow run created with the task run as its parent before then is refused (409, foreign key)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.read_task_run(task_run_id)
            return
        except ObjectNotFound:
            if time.monotonic() > deadline:
                raise FoldFailedError(f"task run {task_run_id} was not recorded by the Prefect API within {timeout_s:.0f} s; "
                                      "check that the Prefect server is healthy, then rerun (finished folds are reused)") from None
            time.sleep(0.25)


def _raise_fold_process_failed(config: RunConfig, fold: int, flow_run, mlflow_run_id: str, exitcode: int, state) -> None:
    """Mark the fold's flow run failed if its process could not, and raise the error that says why:
    FoldProcessKilledError (retried: it resumes) for a signal, FoldFailedError otherwise."""
    if exitcode < 0:
        how = f"killed by signal {-exitcode}"
    elif exitcode > 0:
        how = f"exit code {exitcode}"
    else:
        how = f"{state.name if state else 'no state'}: {(state.message if state else '') or 'no message'}"
    if state is None or not state.is_final():
        with get_prefect_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Failed(message=how), force=True)
    recorded = recorded_fold_error(config, mlflow_run_id) if exitcode >= 0 else None
    if recorded:  # e.g. CUDA out of memory: the fold's own line says what to change
        raise FoldFailedError(f"{recorded}; flow run '{flow_run.name}' ({flow_run.id}), MLflow run {mlflow_run_id}")
    error = FoldProcessKilledError if exitcode < 0 else FoldFailedError
    raise error(
        f"fold {fold} failed ({how}) in flow run '{flow_run.name}' ({flow_run.id}); "
        f"MLflow run {mlflow_run_id}. See that flow run's logs; rerunning resumes from its last checkpoint."
    )


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
