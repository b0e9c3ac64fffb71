"""The console summary's device column: the slot each fold ran on, read from its MLflow run (arena_pref.device)."""

from __future__ import annotations

from mlflow import MlflowClient

from arena_pref import cli
from arena_pref.tasks.training import TAG_DEVICE


def test_the_summary_shows_which_device_ran_which_fold(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("summary", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    on_gpu = client.create_run(experiment, tags={TAG_DEVICE: "2,3"}).info.run_id
    in_process = client.create_run(experiment).info.run_id  # cv.execution=in_process: no slot
    result = {
        "metrics": {"oof_log_loss": 0.9, "oof_accuracy": 0.5, "n_oof": 40, "prior_log_loss": 1.09},
        "fold_log_loss": {0: 0.8, 1: 1.0}, "fold_accuracy": {0: 0.6, 1: 0.4}, "fold_rows": {0: 20, 1: 20},
        "fold_run_ids": {0: on_gpu, 1: in_process}, "parent_run_id": parent,
        "model_uri": "models:/summary/1", "promoted": True, "promotion": "no champion yet", "oof_path": "oof.parquet",
    }
    cli._print_summary(result, uri)
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("fold  log loss  accuracy   rows  device")
    assert lines[header + 1].split() == ["0", "0.8000", "0.600", "20", "2,3"]
    assert lines[header + 2].split() == ["1", "1.0000", "0.400", "20", "-"]
