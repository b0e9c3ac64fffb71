"""cv.max_parallel: fold processes run at the same time, each on its own device slot, with the same results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlflow import MlflowClient
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.data.synthetic import write_synthetic_csvs
from tests.factories import tiny_recipe_config

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, name: str, train_csv: Path, *extra: str):
    # 120 steps (~5 s a fold here): long enough that the second process, whose start on a loaded 2-core box can
    # lag the first by several seconds (process start, the task run's record reaching the API), still overlaps.
    return tiny_recipe_config(
        tmp_path,
        train_csv,
        "cv.folds=[0, 1]",
        "train.num_epochs=1",
        "train.max_steps=120",
        "train.save_steps=1000",
        *extra,
        name=name,
    )


def _child_flow_runs(fold_run_ids: dict[int, str]):
    """The Prefect `train-fold` flow runs that trained the given MLflow fold runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train-fold"])))
    wanted = set(fold_run_ids.values())
    return {r.parameters["fold"]: r for r in runs if r.parameters.get("mlflow_run_id") in wanted}


def test_two_fold_processes_overlap_on_their_own_slots_and_match_a_sequential_run(prefect_harness, tmp_path):
    from arena_pref.flows.cv_training import cv_training

    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=5)
    parallel = cv_training(_config(tmp_path, "parallel", train_csv, "cv.execution=subprocess", "cv.max_parallel=2"))
    sequential = cv_training(_config(tmp_path, "sequential", train_csv, "cv.execution=in_process"))

    children = _child_flow_runs(parallel.fold_run_ids)
    assert sorted(children) == [0, 1]
    first, second = sorted(children.values(), key=lambda r: r.start_time)
    assert all(r.state.is_completed() for r in children.values())
    assert second.start_time < first.end_time, "the two fold processes did not overlap in time"
    # The UI shows each fold's run under the task run that started its process, inside the parent flow run.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        parents = [prefect.read_task_run(r.parent_task_run_id) for r in children.values()]
    assert {t.name.rsplit("-", 1)[0] for t in parents} == {"train-fold-process"}
    assert len({t.flow_run_id for t in parents}) == 1 and len({t.id for t in parents}) == 2

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = {k: client.get_run(run_id).data.tags for k, run_id in parallel.fold_run_ids.items()}
    slots = {k: t["arena_pref.device"] for k, t in tags.items()}
    assert sorted(slots.values()) == ["cpu:0", "cpu:1"]
    # Each process saw the slot it was given, not a neighbour's.
    assert all(t["arena_pref.device_slot"] == slots[k] for k, t in tags.items())
    assert len({t["arena_pref.pid"] for t in tags.values()}) == 2

    # Same seeds, same folds: parallel processes change nothing in what is computed.
    assert parallel.oof.scores.log_loss == pytest.approx(sequential.oof.scores.log_loss, abs=1e-6)
    ours = pd.read_parquet(parallel.oof.oof_path).sort_values("id")
    theirs = pd.read_parquet(sequential.oof.oof_path).sort_values("id")
    np.testing.assert_allclose(ours[list(LABEL_COLUMNS)].to_numpy(), theirs[list(LABEL_COLUMNS)].to_numpy(), atol=1e-6)
