"""A fold process killed from outside (SIGKILL) after its first checkpoint is retried and resumes.

The resumed fold must end with the same LoRA weights and val_log_loss as an uninterrupted run with
the same seed, the OOF predictions must cover every row once, and the MLflow history must say what
happened (attempt 2, resumed from which checkpoint) in the same fold run, not a silent duplicate.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from mlflow import MlflowClient
from pref_core.data.synthetic import write_synthetic_csvs
from tests.factories import tiny_recipe_config

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, name: str, train_csv: Path, execution: str):
    return tiny_recipe_config(
        tmp_path,
        train_csv,
        f"cv.execution={execution}",
        "cv.folds=[0]",
        "train.num_epochs=3",
        "train.save_steps=3",
        "train.save_total_limit=5",
        "train.per_device_batch_size=8",
        name=name,
    )


def _kill_after_first_checkpoint(config, killed: dict, timeout_s: float = 300) -> None:
    """Watch for the first complete checkpoint, then SIGKILL the process training the fold."""
    client = MlflowClient(config.tracking.uri)
    deadline = time.time() + timeout_s
    root = Path(config.output_dir)
    while time.time() < deadline:
        done = list(root.glob("runs/*/fold_0/checkpoints/checkpoint-*/trainer_state.json"))
        if done:
            experiment = client.get_experiment_by_name(config.tracking.experiment)
            runs = client.search_runs([experiment.experiment_id], filter_string="tags.arena_pref.fold = '0'")
            pid = int(runs[0].data.tags["arena_pref.pid"])
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, checkpoint=done[0].parent.name)
            return
        time.sleep(0.05)


def test_killed_fold_resumes_to_the_same_result(prefect_harness, tmp_path):
    from arena_pref.flows.cv_training import cv_training

    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=21)

    reference_config = _config(tmp_path, "reference", train_csv, "in_process")
    reference = cv_training(reference_config)

    config = _config(tmp_path, "crashed", train_csv, "subprocess")
    killed: dict = {}
    watcher = threading.Thread(target=_kill_after_first_checkpoint, args=(config, killed), daemon=True)
    watcher.start()
    result = cv_training(config)
    watcher.join(timeout=5)
    assert killed, "the fold finished before it could be killed"
    assert killed["pid"] != os.getpid()

    client = MlflowClient(config.tracking.uri)
    fold_run = client.get_run(result.fold_run_ids[0])
    assert fold_run.info.status == "FINISHED"
    assert fold_run.data.tags["arena_pref.attempt"] == "2"
    assert fold_run.data.tags["arena_pref.resumed_from"].endswith(killed["checkpoint"])
    experiment = client.get_experiment_by_name("crashed")
    assert len(client.search_runs([experiment.experiment_id], filter_string="tags.arena_pref.fold = '0'")) == 1

    # Same final weights and the same validation loss as the uninterrupted run.
    ours = load_file(str(Path(fold_run.data.tags["arena_pref.fold_dir"]) / "adapter" / "adapter_model.safetensors"))
    ref_dir = Path(client.get_run(reference.fold_run_ids[0]).data.tags["arena_pref.fold_dir"])
    theirs = load_file(str(ref_dir / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, err_msg=name)
    assert result.oof.fold_log_loss[0] == pytest.approx(reference.oof.fold_log_loss[0], abs=1e-4)

    oof = pd.read_parquet(result.oof.oof_path)
    folds = pd.read_parquet(Path(config.output_dir) / "runs" / result.run_key / "folds.parquet")
    assert sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == 0, "id"])
    assert oof["id"].is_unique

    # Prefect shows the killed attempt as failed and the retry as completed.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["fold-0", "fold-0-attempt-2"]))
        )
    states = {}
    for run in runs:
        if run.parameters.get("mlflow_run_id") == fold_run.info.run_id:
            states[run.name] = run.state.type.value
    assert states == {"fold-0": "FAILED", "fold-0-attempt-2": "COMPLETED"}
