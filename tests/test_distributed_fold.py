"""train.num_processes=2: one fold trained by two DDP processes (gloo on CPU) computes what one process does.

The reference is the same fold, data and seeds in one process. Both see the same rows in every optimizer
step (per_device_batch_size x gradient_accumulation_steps; each of the two processes accumulates half), so
the losses, the weights and the validation predictions agree to float rounding. Measured on this data
with 9 of the epoch's 10 steps: equal to the last digit (TOLERANCE is float32 rounding headroom). Only an
epoch's last step can differ: when its rows do not split evenly over the processes, accelerate completes
the short batch with rows from the start of the epoch (measured here with all 10 steps: val log loss
5e-4 apart), which is why the run stops before it.

A 2-process fold whose rank 1 is SIGKILLed after its first checkpoint is restarted by torchrun
(--max-restarts=2) and resumes from that checkpoint; it ends with the weights and validation predictions
of the uninterrupted 2-process run (measured: equal to the last digit, the same TOLERANCE).
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
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.data.synthetic import write_synthetic_csvs
from tests.factories import tiny_recipe_config

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


def _config(tmp_path: Path, name: str, csvs: tuple[Path, Path], *extra: str):
    train_csv, test_csv = csvs  # the test rows are predicted by rank 0, with a progress bar
    return tiny_recipe_config(
        tmp_path,
        train_csv,
        "cv.execution=in_process",
        "cv.folds=[0]",
        "train.num_epochs=1",
        "train.per_device_batch_size=4",
        "train.gradient_accumulation_steps=2",
        "train.save_steps=1000",
        "train.max_steps=9",
        *extra,
        name=name,
        test_csv=test_csv,
    )


@pytest.fixture(scope="module")
def quiet_console():
    """The console of `arena-pref train` (arena_pref/console.py): bars drawn on a saved stderr descriptor
    named by ARENA_PREF_CONSOLE_FD. torchrun's workers inherit the name but not the descriptor, and must
    not draw into whatever file gets that number there (it was the SQLite tracking store)."""
    from pref_core.progress import CONSOLE_FD_ENV

    saved = os.dup(2)
    os.set_inheritable(saved, True)
    before = os.environ.get(CONSOLE_FD_ENV)
    os.environ[CONSOLE_FD_ENV] = str(saved)
    yield
    if before is None:
        del os.environ[CONSOLE_FD_ENV]
    else:
        os.environ[CONSOLE_FD_ENV] = before
    os.close(saved)


@pytest.fixture(scope="module")
def two_process_run(prefect_harness, quiet_console, tmp_path_factory):
    """The uninterrupted 2-process fold: the reference of both tests (one torchrun launch, shared)."""
    from arena_pref.flows.cv_training import cv_training

    tmp_path = tmp_path_factory.mktemp("distributed")
    csvs = write_synthetic_csvs(tmp_path / "data", n_train=100, n_test=10, signal=0.9, seed=7)
    return tmp_path, csvs, cv_training(_config(tmp_path, "double", csvs, "train.num_processes=2"))


def _final_adapter(output_dir: Path) -> Path:
    adapters = [p for p in output_dir.glob("runs/*/fold_0/**/adapter_model.safetensors") if "checkpoint" not in str(p)]
    assert [p.parent.name for p in adapters] == ["adapter"]  # one adapter, written by rank 0
    return adapters[0]


def test_two_process_fold_matches_one_process(two_process_run):
    from arena_pref.flows.cv_training import cv_training

    tmp_path, csvs, double = two_process_run
    single = cv_training(_config(tmp_path, "single", csvs))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    one, two = (client.get_run(r.fold_run_ids[0]) for r in (single, double))
    assert two.data.tags["arena_pref.num_processes"] == "2"
    # Bookkeeping (steps, the mean train loss) is in params; the scores are metrics.
    assert two.data.params["global_step"] == one.data.params["global_step"] == "9"
    measured = {"val_log_loss": abs(two.data.metrics["val_log_loss"] - one.data.metrics["val_log_loss"])}
    measured["train_loss"] = abs(float(two.data.params["train_loss_mean"]) - float(one.data.params["train_loss_mean"]))
    print(f"2-process vs 1-process fold: {measured}")
    assert all(d < TOLERANCE for d in measured.values()), measured

    # Every validation row predicted exactly once (the uneven last batch neither dropped nor doubled).
    folds = pd.read_parquet(next(Path(tmp_path / "double").glob("runs/*/folds.parquet")))
    expected = sorted(folds.loc[folds["fold"] == 0, "id"].astype(str))
    ours = pd.read_parquet(double.oof.oof_path).sort_values("id")
    assert sorted(ours["id"]) == expected and ours["id"].is_unique
    theirs = pd.read_parquet(single.oof.oof_path).sort_values("id")
    gap = np.abs(ours[list(LABEL_COLUMNS)].to_numpy() - theirs[list(LABEL_COLUMNS)].to_numpy()).max()
    print(f"largest validation probability gap: {gap:.2e}")
    assert gap < TOLERANCE
    _final_adapter(tmp_path / "double")


def _kill_rank_after_first_checkpoint(output_dir: Path, rank: int, killed: dict, timeout_s: float = 600) -> None:
    """Watch for the fold's first complete checkpoint, then SIGKILL one of its training processes."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        done = list(output_dir.glob("runs/*/fold_0/checkpoints/checkpoint-*/trainer_state.json"))
        if done:
            # Every process of the fold writes its pid before anything slow (tasks/fold_worker.py).
            (pid_file,) = output_dir.glob(f"runs/*/fold_0/distributed/pid-{rank}")
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, pid_file=pid_file, checkpoint=done[0].parent.name)
            return
        time.sleep(0.02)


def test_sigkilled_two_process_fold_resumes_to_the_uninterrupted_result(two_process_run):
    from arena_pref.flows.cv_training import cv_training

    tmp_path, csvs, double = two_process_run
    config = _config(tmp_path, "killed", csvs, "train.num_processes=2", "train.save_steps=3")
    killed: dict = {}
    watcher = threading.Thread(
        target=_kill_rank_after_first_checkpoint, args=(Path(config.output_dir), 1, killed), daemon=True
    )
    watcher.start()
    started = time.time()
    result = cv_training(config)
    print(f"killed-and-resumed 2-process fold: {time.time() - started:.1f}s")
    watcher.join(timeout=5)
    assert killed, "the fold finished before rank 1 could be killed"
    assert int(killed["pid_file"].read_text()) != killed["pid"]  # rank 1 ran again, in a new process

    client = MlflowClient(config.tracking.uri)
    fold_run = client.get_run(result.fold_run_ids[0])
    reference = client.get_run(double.fold_run_ids[0])
    assert fold_run.info.status == "FINISHED"
    assert fold_run.data.tags["arena_pref.distributed_restarts"] == "1"  # torchrun restarted the group once
    assert fold_run.data.tags["arena_pref.resumed_from"].endswith(killed["checkpoint"])
    assert fold_run.data.params["global_step"] == reference.data.params["global_step"] == "9"

    # The same weights and validation predictions as the uninterrupted 2-process run, every row once.
    ours, theirs = (load_file(str(_final_adapter(tmp_path / name))) for name in ("killed", "double"))
    assert ours.keys() == theirs.keys()
    weight_gap = max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours)
    loss_gap = abs(fold_run.data.metrics["val_log_loss"] - reference.data.metrics["val_log_loss"])
    resumed = pd.read_parquet(result.oof.oof_path).sort_values("id")
    uninterrupted = pd.read_parquet(double.oof.oof_path).sort_values("id")
    assert list(resumed["id"]) == list(uninterrupted["id"]) and resumed["id"].is_unique
    gap = np.abs(resumed[list(LABEL_COLUMNS)].to_numpy() - uninterrupted[list(LABEL_COLUMNS)].to_numpy()).max()
    print(f"resumed vs uninterrupted: weights {weight_gap:.2e}, val_log_loss {loss_gap:.2e}, probabilities {gap:.2e}")
    assert max(weight_gap, loss_gap, gap) < TOLERANCE
