"""End to end on real servers: `arena-pref stack up --gpus 2`, `prefect deployment run 'cv-training/gpu'`, stack down.

The fold workers get their own scratch folders (ARENA_PREF_OUTPUT_DIR), so anything the
parent needs from a fold has to travel through MLflow, as it would across machines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arena_pref import stack
from pref_core.data.synthetic import write_synthetic_csvs
from tests import servers

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_cv_training_deployment_on_two_workers(tmp_path):
    from prefect.client.orchestration import get_client

    from mlflow import MlflowClient

    train_csv, test_csv = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=20, signal=0.9, seed=5)
    state_dir = tmp_path / "stack"
    state = stack.up(state_dir, gpus=2, prefect_port=0, mlflow_port=0, mlflow_store=tmp_path / "mlflow")
    pids = dict(state.processes)
    try:
        if servers.has_proc_net():  # the servers and workers `up` started listen on loopback only
            listening = servers.listening_addresses([p for pid in pids.values() for p in servers.group_pids(pid)])
            ports = {int(url.split(":")[2].split("/")[0]) for url in (state.prefect_api_url, state.mlflow_url)}
            assert ports <= {port for _, port in listening}, listening
            assert all(servers.is_loopback(address) for address, _ in listening), listening
            for address in servers.non_loopback_ipv4():
                assert all(servers.refuses(address, port) for port in ports), f"the stack answers on {address}"
        env = stack.base_env(state)
        overrides = [
            f"data.train_csv={train_csv}",
            f"data.test_csv={test_csv}",
            f"output_dir={tmp_path / 'parent'}",
            "tracking.experiment=e2e",
            "tracking.registered_model=arena-pref-e2e",
            "train.num_epochs=1",
        ]
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("prefect")),
                "deployment",
                "run",
                "cv-training/gpu",
                "--param",
                "config_path=configs/tiny.yaml",
                "--param",
                f"overrides={json.dumps(overrides)}",
                "--watch",
                "--watch-timeout",
                "900",
            ],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=1000,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

        client = MlflowClient(state.mlflow_url)
        experiment = client.get_experiment_by_name("e2e")
        parents = client.search_runs([experiment.experiment_id], filter_string="tags.arena_pref.kind = 'cv'")
        assert len(parents) == 1
        parent = parents[0]
        assert parent.info.status == "FINISHED"
        assert 0.0 < parent.data.metrics["oof_log_loss"] < 5.0
        folds = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        assert sorted(int(r.data.tags["arena_pref.fold"]) for r in folds) == [0, 1, 2, 3, 4]
        # Folds ran in worker processes, not in the parent's.
        fold_pids = {r.data.tags["arena_pref.pid"] for r in folds}
        assert parent.data.tags["arena_pref.pid"] not in fold_pids
        versions = client.search_model_versions("name = 'arena-pref-e2e'")
        assert len(versions) == 1 and versions[0].run_id == parent.info.run_id

        # Fold checkpoints live only in the workers' scratch folders.
        assert not list((tmp_path / "parent").glob("runs/*/fold_*"))
        worker_folds = list((state_dir / "workers").glob("gpu-*/runs/*/fold_*/adapter"))
        assert len(worker_folds) == 5

        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: state.prefect_api_url}), get_client(sync_client=True) as prefect:
            fold_runs = prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"fold-{k}" for k in range(5)]))
            )
        assert {r.work_pool_name for r in fold_runs} == {stack.GPU_POOL}
        assert all(r.state.is_completed() for r in fold_runs)
        assert all(r.parent_task_run_id is not None for r in fold_runs)  # shown under the parent in the UI
    finally:
        stack.down(state_dir)
    for name, pid in pids.items():
        assert not stack._alive(pid), f"{name} (pid {pid}) still running after stack down"
