"""`arena-pref report`: runs named by id, name or models:/ URI, read back from MLflow, one page or a comparison."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from arena_pref.cli import main
from mlflow import MlflowClient
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.evaluate.report import FoldScore, RunScores, RunSummary


def _log_finished_run(client, experiment, tmp_path, name, p_true, lr):
    """A parent run as cv-training leaves it: run_summary.json under report/ and the OOF table at the root."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    probs = np.full((60, 3), (1 - p_true) / 2)
    probs[np.arange(60), labels] = p_true
    oof = pd.DataFrame({"id": [str(i) for i in range(60)], "fold": np.arange(60) % 2, "label": labels})
    for k, column in enumerate(LABEL_COLUMNS):
        oof[column] = probs[:, k]
    loss = float(-np.log(p_true))
    summary = RunSummary(
        name=name,
        scores=RunScores(oof_log_loss=loss, oof_accuracy=0.5, prior_log_loss=1.0986, n_oof=60),
        folds=(FoldScore(0, loss, 0.5, 30), FoldScore(1, loss, 0.5, 30)),
        config={"train.learning_rate": lr, "output_dir": f"/tmp/{name}"},
    )
    run = client.create_run(experiment, run_name=name)
    folder = tmp_path / name
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "run_summary.json").write_text(json.dumps(summary.to_dict()))
    oof.to_parquet(folder / "oof_predictions.parquet")
    client.log_artifact(run.info.run_id, str(folder / "report" / "run_summary.json"), "report")
    client.log_artifact(run.info.run_id, str(folder / "oof_predictions.parquet"))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("report-test")
    first = _log_finished_run(client, experiment, tmp_path, "tiny·lr=2e-3·aaaaaa", 0.6, 0.002)
    second = _log_finished_run(client, experiment, tmp_path, "tiny·lr=5e-4·bbbbbb", 0.4, 0.0005)
    client.create_registered_model("m")
    client.create_model_version("m", source="file:///nowhere", run_id=second)
    client.set_registered_model_alias("m", "champion", "1")
    return uri, first, second


def test_two_runs_by_name_and_by_alias_give_a_comparison_page(store, tmp_path, capsys):
    uri, first, _ = store
    out = tmp_path / "compare.html"
    refs = ["tiny·lr=2e-3·aaaaaa", "models:/m@champion"]
    assert main(["report", *refs, "--out", str(out), "--n-boot", "200", "--tracking-uri", uri]) == 0
    said = capsys.readouterr().out
    assert "comparison of tiny·lr=2e-3·aaaaaa, tiny·lr=5e-4·bbbbbb" in said
    html = out.read_text(encoding="utf-8")
    assert "tiny·lr=5e-4·bbbbbb" in html and "train.learning_rate" in html
    assert "output_dir" not in html  # result-neutral fields are no difference worth showing
    assert "<script" not in html


def test_one_run_by_id_gives_its_page_and_an_unknown_name_is_one_line(store, tmp_path, capsys, monkeypatch):
    uri, first, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "one.html"
    assert main(["report", first, "--out", str(out)]) == 0
    assert "tiny·lr=2e-3·aaaaaa" in out.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["report", "no-such-run", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'no-such-run': no MLflow run has this id or name") and err.count("\n") == 1
