"""End-to-end `cv-training` on the tiny model under a Prefect test harness, MLflow on a temporary SQLite store."""

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


def _tiny_config(tmp_path: Path, train_csv: Path, test_csv: Path | None, *extra: str):
    return tiny_recipe_config(
        tmp_path,
        train_csv,
        "tracking.experiment=flow-test",
        "train.num_epochs=1",
        "train.save_steps=1000",
        *extra,
        test_csv=test_csv,
    )


@pytest.fixture(scope="module")
def synthetic_csvs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_synthetic_csvs(folder, n_train=150, n_test=40, signal=0.9, seed=3)


def test_cv_training_five_folds_in_subprocesses(prefect_harness, tmp_path, synthetic_csvs):
    from arena_pref.flows.cv_training import cv_training

    train_csv, test_csv = synthetic_csvs
    config = _tiny_config(tmp_path, train_csv, test_csv)
    result = cv_training(config)

    client = MlflowClient(config.tracking.uri)
    parent = client.get_run(result.parent_run_id)
    # A config built in code has no recipe: base model, head and the short run key name the run.
    assert parent.info.run_name == f"tiny·label_token·{result.run_key[:6]}"
    assert parent.info.status == "FINISHED"
    for key in ("oof_log_loss", "oof_accuracy", "prior_log_loss", "fold_log_loss"):
        assert key in parent.data.metrics, key
    for key in ("n_train_kept", "n_train_rejected", "n_oof"):  # bookkeeping: params, not charts
        assert key in parent.data.params and key not in parent.data.metrics, key
    assert parent.data.params["model.head"] == "label_token"
    assert parent.data.params["cv.n_folds"] == "5"
    assert parent.data.tags["arena_pref.train_hash"]

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(int(r.data.tags["arena_pref.fold"]) for r in children) == [0, 1, 2, 3, 4]
    assert sorted(r.info.run_name for r in children) == [f"{parent.info.run_name}/fold-{k}" for k in range(5)]
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"val_log_loss", "val_accuracy", "train_loss", "learning_rate"} <= set(child.data.metrics)
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) >= 1
        adapter = {a.path for a in client.list_artifacts(child.info.run_id, "adapter")}
        assert "adapter/adapter_model.safetensors" in adapter
        assert "adapter/adapter_config.json" in adapter
        assert "adapter/tokenizer.json" in adapter
        top = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"val_predictions.parquet", "test_predictions.parquet"} <= top

    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"oof_predictions.parquet", "submission.csv", "plots"} <= parent_artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {
        "plots/fold_log_loss.png",
        "plots/reliability.png",
        "plots/confusion_matrix.png",
        "plots/calibration_temperature.png",
        "plots/log_loss_by_length.png",
    }

    # OOF covers every kept training row exactly once, each in the fold that held it out.
    oof = pd.read_parquet(result.oof.oof_path)
    train = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    assert sorted(oof["id"]) == sorted(train["id"])
    assert oof["id"].is_unique
    np.testing.assert_allclose(oof[list(LABEL_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)
    assert parent.data.params["n_oof"] == str(len(train)) and "n_oof" not in parent.data.metrics

    submission = pd.read_csv(result.submission_path, dtype={"id": str})
    test = pd.read_csv(test_csv, dtype=str, keep_default_na=False)
    assert list(submission.columns) == ["id", *LABEL_COLUMNS]
    assert submission["id"].tolist() == test["id"].tolist()
    values = submission[list(LABEL_COLUMNS)].to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-6)
    assert all(not a.path.endswith(".bin") for c in children for a in client.list_artifacts(c.info.run_id, "adapter"))

    # The registered pyfunc reproduces the in-flow predictions from the fold adapters alone
    # (this is what catches a model that silently reloads random base weights).
    import mlflow

    mlflow.set_tracking_uri(config.tracking.uri)
    version = client.get_model_version_by_alias("arena-pref", "champion")
    assert result.registration.model_uri == f"models:/arena-pref/{version.version}"
    assert version.run_id == parent.info.run_id
    assert float(version.tags["oof_log_loss"]) == pytest.approx(parent.data.metrics["oof_log_loss"], abs=1e-6)
    assert version.tags["n_folds"] == "5" and version.tags["data_hash"] == parent.data.tags["arena_pref.train_hash"]
    loaded = mlflow.pyfunc.load_model("models:/arena-pref@champion")
    reloaded = loaded.predict(test)
    assert reloaded["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(reloaded[list(LABEL_COLUMNS)].to_numpy(), values, atol=1e-5)

    # The predict flow (behind `arena-pref predict`) writes the same submission.
    from arena_pref.flows.predict import predict

    out = predict("models:/arena-pref@champion", str(test_csv), str(tmp_path / "pred.csv"), config.tracking.uri)
    predicted = pd.read_csv(out, dtype={"id": str})
    assert predicted["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(predicted[list(LABEL_COLUMNS)].to_numpy(), values, atol=1e-5)


def test_rerun_reuses_finished_folds_in_process(prefect_harness, tmp_path, synthetic_csvs):
    """A second identical run reuses the token cache and the finished fold instead of retraining."""
    from arena_pref.flows.cv_training import cv_training

    train_csv, _ = synthetic_csvs
    config = _tiny_config(tmp_path, train_csv, None, "cv.execution=in_process", "cv.folds=[0, 1]")
    first = cv_training(config)
    second = cv_training(config)
    client = MlflowClient(config.tracking.uri)
    for fold, run_id in second.fold_run_ids.items():
        run = client.get_run(run_id)
        assert run.data.tags.get("arena_pref.reused") == "true"
        assert run.data.metrics["val_log_loss"] == pytest.approx(first.oof.fold_log_loss[fold])
    assert second.oof.scores.log_loss == pytest.approx(first.oof.scores.log_loss)
    assert second.submission_path is None
    # The same computation again: nothing new in the registry, the run names the version that holds it.
    assert first.registration.registered and not second.registration.registered
    assert second.registration.version == first.registration.version
