"""Fold training tasks: open the fold's MLflow run, train one fold (in this process or as torchrun's processes),
log its outputs. Running a fold away from the parent: arena_pref.tasks.fold_launcher."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pandas as pd
from prefect import get_run_logger, task

from arena_pref.tasks import distillation, pseudo_labels, resources, stopping, tracking, workspace
from arena_pref.tasks.preparation import TASK_DEFAULTS, PreparedInputs
from pref_core.config.naming import fold_run_name
from pref_core.config.schema import RunConfig
from pref_core.data import fold_rows
from pref_core.errors import UserError
from pref_core.progress import CONSOLE_FD_ENV, CONSOLE_PATH_ENV, FoldProgressCallback
from pref_core.train.devices import DEVICE_SLOT_ENV
from pref_core.train.disk_space import FoldDiskFullError
from pref_core.train.fold import FoldOutOfMemoryError, fine_tune_fold
from pref_core.train.result import RESULT_FILE, FoldResult

LOGGER = logging.getLogger(__name__)


class FoldFailedError(UserError, RuntimeError):
    """A fold's training failed; the message names the fold and where to look."""


@task(name="open-fold-run", **TASK_DEFAULTS)
def open_fold_run(config: RunConfig, parent_run_id: str, fold: int, parent_name: Optional[str] = None) -> str:
    """Create the fold's nested MLflow run up front, so retries and remote workers log into the same one; it is
    named '<parent name>/fold-k' (the parent's current name when `parent_name` is not given)."""
    client = tracking.get_client(config)
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        run_name=fold_run_name(parent_name or parent.info.run_name, fold),
        tags={tracking.TAG_PARENT: parent_run_id, tracking.TAG_FOLD: str(fold), tracking.TAG_KIND: "fold"},
    )
    stopping.record_mlflow_run(client.tracking_uri, run.info.run_id)
    tracking.log_params(client, run.info.run_id, {**config.flat(), "fold": fold})
    tracking.log_config(client, run.info.run_id, config)
    return run.info.run_id


def _tag_attempt(client, mlflow_run_id: str, folder: Path) -> int:
    """Count this attempt on the fold's run and say where it runs; returns the attempt number (1, 2, ...)."""
    attempt = int(client.get_run(mlflow_run_id).data.tags.get("arena_pref.attempt", "0")) + 1
    tracking.set_tags(
        client,
        mlflow_run_id,
        {
            "arena_pref.attempt": attempt,
            "arena_pref.fold_dir": folder,
            tracking.TAG_HOST: socket.gethostname(),
            tracking.TAG_PID: os.getpid(),
            # What this process was given (cv.max_parallel), and so which GPU it trained on.
            "arena_pref.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "arena_pref.device_slot": os.environ.get(DEVICE_SLOT_ENV, ""),
        },
    )
    return attempt


def finished_folds(config: RunConfig, run_key: str, folds) -> list[int]:
    """The folds of `folds` that a run with this run key finished (their result file exists), in order."""
    return [k for k in sorted(folds) if (workspace.fold_dir(config, run_key, k) / RESULT_FILE).is_file()]


@task(name="fit-fold", **TASK_DEFAULTS)
def fit_fold(
    config: RunConfig, fold: int, mlflow_run_id: str, prepared: PreparedInputs, force: bool = False
) -> FoldResult:
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
    """(train, validation, test) datasets of the fold and counts to log: the split, extra rows, teacher labels and
    pseudo-labelled rows (pref_core.data.fold_rows, arena_pref.tasks.pseudo_labels)."""
    from pref_core.text.tokenization import load_token_cache

    train_ds, val_ds = fold_rows.split_fold(
        load_token_cache(prepared.train_tokens.path), pd.read_parquet(prepared.folds_path), fold
    )
    extra_ds = load_token_cache(prepared.extra_tokens.path) if prepared.extra_tokens else None
    teacher = distillation.teacher_frame(config, fold, prepared.train_hash, val_ds["id"], client)
    pseudo_ds, counts = pseudo_labels.fold_pseudo_rows(config, prepared, fold, val_ds["id"])
    train_ds = fold_rows.fold_train_set(train_ds, extra_ds, teacher, pseudo_ds)
    # The test set is predicted by the trained model in memory: no second load of the base.
    test_ds = load_token_cache(prepared.test_tokens.path) if prepared.test_tokens else None
    return train_ds, val_ds, test_ds, counts


def _train_new_fold(
    config: RunConfig, fold: int, mlflow_run_id: str, prepared: PreparedInputs, folder: Path, client, attempt: int
) -> FoldResult:
    logger = get_run_logger()
    train_ds, val_ds, test_ds, counts = _fold_datasets(config, fold, prepared, client)
    logger.info(
        "fold %d: %d train rows (%d extra, %d pseudo-labelled), %d validation rows",
        fold,
        len(train_ds),
        prepared.extra.n_kept if prepared.extra else 0,
        counts.get("n_pseudo_rows", 0),
        len(val_ds),
    )
    if counts:  # how many pseudo-labelled rows this fold trained on, and how many a validation prompt kept out
        tracking.log_params(client, mlflow_run_id, counts)  # bookkeeping: params, so the metrics are the scores
    monitor = tracking.SystemMetrics(client, mlflow_run_id, config.tracking.system_metrics_interval_s, attempt > 1)
    progress = FoldProgressCallback(f"fold {fold}")
    try:
        with monitor:
            if config.train.num_processes > 1:
                result = _train_fold_in_processes(
                    config,
                    fold,
                    train_ds,
                    val_ds,
                    prepared.test_tokens.path if prepared.test_tokens else None,
                    folder,
                    mlflow_run_id,
                    prepared.base_model,
                )
            else:
                result = fine_tune_fold(
                    config,
                    train_ds,
                    val_ds,
                    folder,
                    callbacks=[
                        tracking.MlflowFoldCallback(client, mlflow_run_id),
                        progress,
                    ],
                    name_or_path=prepared.base_model,
                    test_ds=test_ds,
                )
    except FoldOutOfMemoryError as err:
        raise _fold_failed(client, mlflow_run_id, f"fold {fold}: {err} (traceback in {folder / 'error.log'})") from None
    except FoldDiskFullError as err:
        raise _fold_failed(client, mlflow_run_id, f"fold {fold}: {err}") from None
    finally:
        progress.close()
    if result.resumed_from:
        logger.info("fold %d: resumed from %s", fold, result.resumed_from)
        tracking.set_tags(client, mlflow_run_id, {"arena_pref.resumed_from": result.resumed_from})
    return result


# FoldResult.metrics that are bookkeeping, logged as params (metric key -> param name); every other final metric
# (val_log_loss, val_accuracy, val_log_loss_no_tta, throughput) is a metric at the fold's last optimizer step.
FOLD_PARAMS = {"global_step": "global_step", "train_runtime_s": "train_runtime_s", "train_loss": "train_loss_mean"}


def fold_final_metrics(client, run_id: str, metrics: dict) -> tuple[int, dict[str, float]]:
    """(step, metrics) to log when a fold ends: its final metrics less FOLD_PARAMS, at the fold's last optimizer
    step, less the validation metrics the Trainer callback already logged at that step (no second point, and
    never a step-0 copy of the final value that would make every curve start at its end)."""
    step = int(metrics.get("global_step", 0))
    out = {}
    for key, value in metrics.items():
        if key in FOLD_PARAMS:
            continue
        if key.startswith("val_") and any(m.step == step for m in client.get_metric_history(run_id, key)):
            continue
        out[key] = value
    return step, out


def _log_fold_outputs(client, fold: int, run_id: str, result: FoldResult) -> None:
    """Metrics, adapter and predictions to the fold's run, then close it; a failure here loses nothing."""
    try:
        step, final = fold_final_metrics(client, run_id, result.metrics)
        tracking.log_metrics(client, run_id, final, step=step)
        tracking.log_params(
            client, run_id, {p: result.metrics[k] for k, p in FOLD_PARAMS.items() if k in result.metrics}
        )
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
    config: RunConfig,
    fold: int,
    train_ds,
    val_ds,
    test_tokens_path: Optional[str],
    folder: Path,
    mlflow_run_id: str,
    base_model: str,
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
        "config": config.model_dump(mode="json"),
        "output_dir": str(folder),
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking.resolve_tracking_uri(config),
        "base_model": base_model,
        "train": str(work / "train"),
        "val": str(work / "val"),
        # Rank 0 predicts the test rows with the trained model, as a 1-process fold does.
        "test": test_tokens_path,
    }
    (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    processes = config.train.num_processes
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "--max-restarts=2",
        "-m",
        "arena_pref.tasks.fold_worker",
        str(work / "spec.json"),
    ]
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
