"""The runs table leads with the scores: every experiment we log to carries a saved view of the MLflow UI (sorted by
OOF log loss, score columns), and the links we print open it."""

from __future__ import annotations

import json

from arena_pref.tasks import tracking
from mlflow import MlflowClient
from pref_core.evaluate.oof import OOFScores


def _view(client: MlflowClient, experiment_id: str) -> dict:
    view = json.loads(client.get_experiment(experiment_id).tags[tracking.SCORE_VIEW_TAG])
    return {**view, "state": json.loads(view["state"])}  # the UI stores the state as a JSON string


def test_a_new_experiment_gets_the_view_and_an_old_one_gets_it_on_its_next_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    new_id = tracking.ensure_experiment(client, "fresh")
    view = _view(client, new_id)
    assert view["name"] == "arena-pref: runs by OOF log loss" and isinstance(view["createdAt"], int)
    state = view["state"]
    assert state["orderByKey"] == "metrics.`oof_log_loss`" and state["orderByAsc"] is True
    assert state["searchFilter"] == "metrics.oof_log_loss > 0"  # fold runs have no OOF metric: parents only
    assert state["columnOrder"] == [
        "metrics.`oof_log_loss`",
        "metrics.`oof_log_loss_calibrated`",
        "metrics.`oof_accuracy`",
        "metrics.`prior_log_loss`",
    ]
    assert set(state["columnOrder"]) <= set(state["selectedColumns"])

    old_id = client.create_experiment("made-elsewhere", artifact_location=(tmp_path / "a").as_uri())
    assert tracking.SCORE_VIEW_TAG not in client.get_experiment(old_id).tags
    assert tracking.ensure_experiment(client, "made-elsewhere") == old_id
    assert _view(client, old_id)["state"] == state
    assert tracking.ensure_experiment(client, "fresh") == new_id  # found again, view kept as it was
    assert _view(client, new_id)["createdAt"] == view["createdAt"]


def test_the_view_shows_every_score_the_parent_run_logs():
    scores = OOFScores(
        log_loss=0.9,
        accuracy=0.5,
        prior_log_loss=1.09,
        n_oof=10,
        temperature=1.2,
        fitted_temperature=1.2,
        calibrated_log_loss=0.88,
    )
    shown = json.loads(json.loads(tracking.score_view_state(0))["state"])["selectedColumns"]
    assert {f"metrics.`{name}`" for name in scores.metrics} <= set(shown)


def test_links_open_the_model_training_pages_and_the_saved_view():
    assert tracking.runs_table_url("http://h:5000/", "7") == (
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=arena-pref-scores"
    )
    assert tracking.run_url("http://h:5000", "7", "abc") == (
        "http://h:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
