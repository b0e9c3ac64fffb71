"""train.num_processes=2: one fold trained by two DDP processes (gloo on CPU) computes what one process does.

The reference is the same fold, data and seeds in one process. Both see the same rows in every optimizer
step (per_device_batch_size x gradient_accumulation_steps; each of the two processes accumulates half), so
the losses, the weights and the validation predictions agree to float rounding. Measured on this data
with 9 of the epoch's 10 steps: equal to the last digit (TOLERANCE is float32 rounding headroom). Only an
epoch's last step can differ: when its rows do not split evenly over the processes, accelerate completes
the short batch with rows from the start of the epoch (measured here with all 10 steps: val log loss
5e-4 apart), which is why the run stops before it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pref_core.config import load_config
from pref_core.labels import LABEL_COLUMNS
from pref_core.synthetic import write_synthetic_csvs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


def _config(tmp_path: Path, name: str, train_csv: Path, *extra: str):
    return load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.train_csv={train_csv}", f"output_dir={tmp_path / name}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"tracking.experiment={name}",
        f"tracking.registered_model={name}", "cv.execution=in_process", "cv.folds=[0]",
        "train.num_epochs=1", "train.per_device_batch_size=4", "train.gradient_accumulation_steps=2",
        "train.save_steps=1000", "train.max_steps=9", *extra,
    ])


def test_two_process_fold_matches_one_process(prefect_harness, tmp_path):
    from arena_pref.flows.cv_training import cv_training

    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=100, n_test=10, signal=0.9, seed=7)
    single = cv_training(_config(tmp_path, "single", train_csv))
    double = cv_training(_config(tmp_path, "double", train_csv, "train.num_processes=2"))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    one, two = (client.get_run(r["fold_run_ids"][0]) for r in (single, double))
    assert two.data.tags["arena_pref.num_processes"] == "2"
    assert two.data.metrics["global_step"] == one.data.metrics["global_step"] == 9
    measured = {k: abs(two.data.metrics[k] - one.data.metrics[k]) for k in ("val_log_loss", "train_loss")}
    print(f"2-process vs 1-process fold: {measured}")
    assert all(d < TOLERANCE for d in measured.values()), measured

    # Every validation row predicted exactly once (the uneven last batch neither dropped nor doubled).
    folds = pd.read_parquet(next(Path(tmp_path / "double").glob("runs/*/folds.parquet")))
    expected = sorted(folds.loc[folds["fold"] == 0, "id"].astype(str))
    ours = pd.read_parquet(double["oof_path"]).sort_values("id")
    assert sorted(ours["id"]) == expected and ours["id"].is_unique
    theirs = pd.read_parquet(single["oof_path"]).sort_values("id")
    gap = np.abs(ours[list(LABEL_COLUMNS)].to_numpy() - theirs[list(LABEL_COLUMNS)].to_numpy()).max()
    print(f"largest validation probability gap: {gap:.2e}")
    assert gap < TOLERANCE
    # One adapter, written by rank 0.
    adapters = list(Path(tmp_path / "double").glob("runs/*/fold_0/**/adapter_model.safetensors"))
    assert [p.parent.name for p in adapters if "checkpoint" not in str(p)] == ["adapter"]
