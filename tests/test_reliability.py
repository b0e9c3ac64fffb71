"""Failure modes of a run: tracking store down before or during training, reruns, concurrent runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from arena_pref import cli
from mlflow import MlflowClient
from pref_core.config.loading import load_config
from pref_core.data.synthetic import write_synthetic_csvs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def small_csvs(tmp_path_factory):
    return write_synthetic_csvs(tmp_path_factory.mktemp("data"), n_train=80, n_test=10, signal=0.9, seed=11)


def test_unreachable_tracking_server_fails_before_training(capsys, tmp_path, small_csvs):
    uri = f"http://127.0.0.1:{_free_port()}"
    code = cli.main(
        [
            "train",
            "--config",
            str(TINY),
            "--set",
            f"data.train_csv={small_csvs[0]}",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            f"tracking.uri={uri}",
        ]
    )
    output = capsys.readouterr().err
    assert code == 2
    assert uri in output and "not reachable" in output and "Traceback" not in output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_tracking_drop_after_training_keeps_the_adapter(prefect_harness, tmp_path, small_csvs, monkeypatch):
    """The store dies between training and artifact upload: the error says where the adapter is."""
    from arena_pref.flows.cv_training import cv_training
    from arena_pref.tasks.training import FoldFailedError

    config = load_config(
        TINY,
        [
            f"data.train_csv={small_csvs[0]}",
            f"output_dir={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "cv.execution=in_process",
            "cv.folds=[0]",
            "train.num_epochs=1",
        ],
    )

    def store_gone(self, *args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "log_artifacts", store_gone)
    with pytest.raises(FoldFailedError) as excinfo:
        cv_training(config)
    message = str(excinfo.value)
    adapter = Path(message.split("the adapter is in ")[1].split(" and ")[0])
    assert (adapter / "adapter_model.safetensors").exists()
    assert "rerun the same command" in message

    # The parent run is marked failed, not left running.
    client = MlflowClient(config.tracking.uri)
    parents = client.search_runs(
        [client.get_experiment_by_name("arena-pref").experiment_id], filter_string="tags.arena_pref.kind = 'cv'"
    )
    assert [r.info.status for r in parents] == ["FAILED"]

    # Once the store is back, the rerun reuses the trained fold instead of retraining it.
    monkeypatch.undo()
    result = cv_training(config)
    fold_run = client.get_run(result.fold_run_ids[0])
    assert fold_run.data.tags["arena_pref.reused"] == "true"
    assert "adapter/adapter_model.safetensors" in {
        a.path for a in client.list_artifacts(fold_run.info.run_id, "adapter")
    }


@pytest.mark.slow
def test_concurrent_runs_share_output_root_and_store_without_collisions(tmp_path, small_csvs):
    """Two `arena-pref train` processes with different configs, same output_dir and tracking store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "--config",
        str(TINY),
        "--set",
        f"data.train_csv={small_csvs[0]}",
        "--set",
        f"data.test_csv={small_csvs[1]}",
        "--set",
        f"output_dir={tmp_path / 'out'}",
        "--set",
        f"tracking.uri={uri}",
        "--set",
        "cv.execution=in_process",
        "--set",
        "cv.folds=[0, 1]",
        "--set",
        "train.num_epochs=1",
    ]
    # The store does not exist yet: both runs start on a brand-new SQLite file, and the first to open it creates
    # MLflow's tables while the other waits (tasks.tracking.create_sqlite_store).
    assert not (tmp_path / "mlflow.db").exists()
    procs = []
    for lr in ("1e-3", "3e-3"):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{lr}")}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "arena_pref.cli", "train", *common, "--set", f"train.learning_rate={lr}"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("arena-pref")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.arena_pref.kind = 'cv'")
    assert sorted(r.data.params["train.learning_rate"] for r in parents) == ["0.001", "0.003"]
    run_keys = {r.data.tags["arena_pref.run_key"] for r in parents}
    assert len(run_keys) == 2  # separate folders for checkpoints, adapters, OOF and submissions
    for key in run_keys:
        run = tmp_path / "out" / "runs" / key
        assert (run / "fold_0" / "adapter" / "adapter_model.safetensors").exists()
        assert (run / "submission.csv").exists()
    # The two runs train different weights, so their submissions differ.
    subs = [pd.read_csv(tmp_path / "out" / "runs" / k / "submission.csv") for k in sorted(run_keys)]
    assert not subs[0].equals(subs[1])
    for parent in parents:
        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    versions = client.search_model_versions("name = 'arena-pref'")
    assert len(versions) == 2


@pytest.mark.slow
def test_rejected_test_rows_still_get_a_submission_row(prefect_harness, tmp_path, small_csvs):
    """Under a lenient policy a broken test row is quarantined, but the submission keeps its id (class prior)."""
    from arena_pref.flows.cv_training import cv_training
    from pref_core.data.labels import LABEL_COLUMNS

    test = pd.read_csv(small_csvs[1], dtype=str, keep_default_na=False)
    test.loc[3, "prompt"] = '["cut off'
    broken_test = tmp_path / "test.csv"
    test.to_csv(broken_test, index=False)
    config = load_config(
        TINY,
        [
            f"data.train_csv={small_csvs[0]}",
            f"data.test_csv={broken_test}",
            "data.max_bad_fraction=0.2",
            f"output_dir={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "cv.execution=in_process",
            "cv.folds=[0]",
            "train.num_epochs=1",
        ],
    )
    result = cv_training(config)
    submission = pd.read_csv(result.submission_path, dtype={"id": str})
    assert submission["id"].tolist() == test["id"].tolist()
    train = pd.read_csv(small_csvs[0])
    prior = train[list(LABEL_COLUMNS)].mean().to_numpy()
    assert submission.loc[3, list(LABEL_COLUMNS)].to_numpy() == pytest.approx(prior)
    parent = MlflowClient(config.tracking.uri).get_run(result.parent_run_id)
    assert parent.data.params["n_test_prior_filled"] == "1"  # bookkeeping: a param, not a metric
    assert "rejected" in {a.path for a in MlflowClient(config.tracking.uri).list_artifacts(result.parent_run_id)}


def test_a_fold_flow_run_waits_until_the_api_has_recorded_its_parent_task_run(monkeypatch):
    """Task runs reach the Prefect API as events, written a moment later; the fold's flow run names its task run
    as parent, which the API refuses (409) until the record exists. The launcher waits for it."""
    from uuid import uuid4

    from prefect.exceptions import ObjectNotFound

    from arena_pref.tasks import fold_launcher

    class SlowRecorder:
        """read_task_run: not found twice, then found."""

        def __init__(self):
            self.reads = 0

        def read_task_run(self, task_run_id):
            self.reads += 1
            if self.reads < 3:
                raise ObjectNotFound(http_exc=Exception("404"))
            return {"id": task_run_id}

    monkeypatch.setattr(fold_launcher.time, "sleep", lambda seconds: None)
    client = SlowRecorder()
    fold_launcher._wait_for_task_run_record(client, uuid4())
    assert client.reads == 3

    class NeverRecorded(SlowRecorder):
        def read_task_run(self, task_run_id):
            raise ObjectNotFound(http_exc=Exception("404"))

    with pytest.raises(fold_launcher.FoldFailedError, match=r"not recorded by the Prefect API within 0 s; check"):
        fold_launcher._wait_for_task_run_record(NeverRecorded(), uuid4(), timeout_s=0.0)
