"""The console summary's device column: the slot each fold ran on, read from its MLflow run (arena_pref.device)."""

from __future__ import annotations

from arena_pref.summary import print_summary
from arena_pref.tasks.evaluation import OOFOutput
from arena_pref.tasks.registry import RegistrationOutput
from arena_pref.tasks.runs import CVTrainingResult
from arena_pref.tasks.tracking import TAG_DEVICE
from mlflow import MlflowClient
from pref_core.evaluate.oof import OOFScores


def test_the_summary_shows_which_device_ran_which_fold(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("summary", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    on_gpu = client.create_run(experiment, tags={TAG_DEVICE: "2,3"}).info.run_id
    in_process = client.create_run(experiment).info.run_id  # cv.execution=in_process: no slot
    scores = OOFScores(
        log_loss=0.9,
        accuracy=0.5,
        prior_log_loss=1.09,
        n_oof=40,
        temperature=1.0,
        fitted_temperature=1.2,
        fold_accuracy={0: 0.6, 1: 0.4},
        fold_rows={0: 20, 1: 20},
    )
    result = CVTrainingResult(
        parent_run_id=parent,
        fold_run_ids={0: on_gpu, 1: in_process},
        run_key="k",
        oof=OOFOutput(oof_path="oof.parquet", scores=scores, fold_log_loss={0: 0.8, 1: 1.0}),
        registration=RegistrationOutput(
            name="summary", version="1", model_uri="models:/summary/1", promoted=True, reason="no champion yet"
        ),
        submission_path=None,
        rows={},
    )
    print_summary(result, uri)
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("fold  log loss  accuracy   rows  device")
    assert lines[header + 1].split() == ["0", "0.8000", "0.600", "20", "2,3"]
    assert lines[header + 2].split() == ["1", "1.0000", "0.400", "20", "-"]
