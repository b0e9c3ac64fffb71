"""What a run leaves for its users: MLflow dataset inputs, system metrics, config artifacts, throughput
metrics and the new plots; Prefect artifacts (progress, fold table, summary); typed deployment parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mlflow import MlflowClient
from pref_core.config.loading import load_config
from pref_core.config.schema import ConfigError
from pref_core.data.synthetic import write_synthetic_csvs
from pref_core.evaluate import plots

ROOT = Path(__file__).resolve().parents[1]


def test_log_loss_by_length_buckets_by_quantile():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.25, 0.25, 0.5]])
    rows = plots.compute_log_loss_by_length(labels, probs, np.array([10, 20, 30, 40]), n_buckets=2)
    assert [(lo, hi, n) for lo, hi, _, n in rows] == [(10, 25, 2), (25, 40, 2)]
    assert rows[0][2] == pytest.approx(np.log(2)) and rows[1][2] == pytest.approx(np.log(4))


def test_top_class_calibration_counts_confidence_and_accuracy():
    labels = np.array([0, 1, 2, 0])
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6], [0.2, 0.2, 0.6]])
    rows = plots.compute_top_class_calibration(labels, probs, n_bins=10)
    assert rows == [(pytest.approx(0.6), 0.5, 2), (pytest.approx(0.9), 0.5, 2)]


def test_report_to_passes_through_and_refuses_mlflow(tmp_path):
    from pref_core.train.trainer import build_training_arguments

    default = load_config(ROOT / "configs" / "tiny.yaml")
    assert build_training_arguments(default.train, default.model, tmp_path).report_to in ([], ["none"], "none")
    tensorboard = load_config(ROOT / "configs" / "tiny.yaml", ["train.report_to=tensorboard"])
    assert build_training_arguments(tensorboard.train, tensorboard.model, tmp_path).report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="train.report_to"):
        load_config(ROOT / "configs" / "tiny.yaml", ["train.report_to=mlflow"])


def test_deployment_parameters_are_typed_and_predict_has_defaults():
    from prefect.utilities.callables import parameter_schema

    from arena_pref.flows.cv_training import cv_training
    from arena_pref.flows.predict import predict

    properties = parameter_schema(cv_training.fn).properties
    types = {name: {t.get("type") for t in properties[name].get("anyOf", [properties[name]])} for name in properties}
    assert "integer" in types["n_folds"] and "number" in types["learning_rate"] and "string" in types["train_csv"]
    assert {"config_path", "overrides"} <= set(properties)

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    local = next(d for d in spec["deployments"] if d["name"] == "local")
    schema = parameter_schema(predict.fn)
    assert not [p for p in schema.required if p not in local.get("parameters", {})]
    assert {"model_uri", "test_csv", "out"} <= set(local["parameters"])


@pytest.fixture(scope="module")
def finished_run(prefect_harness, tmp_path_factory):
    from arena_pref.flows.cv_training import cv_training

    folder = tmp_path_factory.mktemp("outputs")
    train_csv, test_csv = write_synthetic_csvs(folder / "data", n_train=100, n_test=20, signal=0.9, seed=4)
    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"output_dir={folder / 'out'}",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            "tracking.experiment=outputs-test",
            "train.num_epochs=1",
            "train.save_steps=1000",
            "cv.execution=in_process",
            "calibration.method=temperature",
            "tracking.system_metrics_interval_s=1",
        ],
    )
    # The typed parameters (the deployment's form) set the data and the fold count.
    result = cv_training(config, train_csv=str(train_csv), test_csv=str(test_csv), n_folds=2)
    return config, result, train_csv


def test_mlflow_shows_datasets_config_throughput_system_metrics_and_plots(finished_run):
    from pref_core.hashing import hash_file

    config, result, train_csv = finished_run
    client = MlflowClient(config.tracking.uri)
    parent = client.get_run(result.parent_run_id)
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in parent.inputs.dataset_inputs
    }
    assert set(inputs) == {"train", "test"}
    assert inputs["train"].digest == hash_file(train_csv)[:32]
    assert yaml.safe_load(inputs["train"].profile) == {"num_rows": 100}
    assert Path(train_csv).resolve().as_uri() in inputs["train"].source
    assert yaml.safe_load(inputs["test"].profile) == {"num_rows": 20}

    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "config.yaml" in parent_artifacts
    logged = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "config.yaml")).read_text())
    assert logged["cv"]["n_folds"] == 2 and logged["data"]["train_csv"] == str(train_csv)
    plot_names = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/calibration_temperature.png", "plots/log_loss_by_length.png"} <= plot_names

    for fold, run_id in result.fold_run_ids.items():
        run = client.get_run(run_id)
        assert run.data.metrics["train_tokens_per_second"] > 0
        assert run.data.metrics["train_samples_per_second"] > 0
        assert "config.yaml" in {a.path for a in client.list_artifacts(run_id)}
        system = [k for k in run.data.metrics if k.startswith("system/")]
        assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system


def test_prefect_artifacts_hold_progress_fold_table_and_summary(finished_run):
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    from arena_pref.tasks.artifacts import PROGRESS_KEY, SUMMARY_KEY, TABLE_KEY

    config, result, _ = finished_run
    # Other runs of the session write artifacts under the same keys: read this run's own.
    flow_run_name = (
        MlflowClient(config.tracking.uri).get_run(result.parent_run_id).data.tags["arena_pref.prefect_flow_run"]
    )
    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])))
        found = {
            a.key: a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[PROGRESS_KEY, TABLE_KEY, SUMMARY_KEY]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                )
            )
        }
    assert set(found) == {PROGRESS_KEY, TABLE_KEY, SUMMARY_KEY}
    assert float(found[PROGRESS_KEY].data) == 100.0
    table = found[TABLE_KEY].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["fold"] for row in table] == [0, 1]
    assert table[0]["val_log_loss"] == pytest.approx(result.oof.fold_log_loss[0], abs=1e-5)
    summary = found[SUMMARY_KEY].data
    for needle in (
        "OOF log loss",
        "calibrated OOF log loss",
        "class prior log loss",
        result.registration.in_words(),  # the registry's decision, whichever it was (a tiny run may not beat the prior)
        result.parent_run_id,
        *result.fold_run_ids.values(),
    ):
        assert needle in summary, needle
