"""cv-training as Prefect users meet it: a described deployment form, a preflight that fails with the reason as
the state message (no MLflow run left behind), a final state message with the scores and the registry decision."""

from __future__ import annotations

from types import SimpleNamespace

from mlflow import MlflowClient


def test_every_form_field_has_a_description_and_no_null_type():
    from arena_pref.flows.cv_training import cv_training

    properties = cv_training.parameters.model_dump()["properties"]
    assert set(properties) >= {"config_path", "overrides", "train_csv", "learning_rate", "force"}
    undocumented = [name for name, schema in properties.items() if not schema.get("description")]
    assert not undocumented, undocumented
    assert "learning rate" in properties["learning_rate"]["description"]
    assert properties["force"]["default"] is False


def test_the_final_state_message_holds_the_scores_and_the_registry_decision():
    from arena_pref.tasks.registry import RegistrationOutput
    from arena_pref.tasks.runs import final_message

    scores = SimpleNamespace(log_loss=0.8071, calibrated_log_loss=0.8012, prior_log_loss=1.0983)
    registration = RegistrationOutput("arena-pref", "3", "models:/arena-pref/3", True, "no champion yet")
    result = SimpleNamespace(oof=SimpleNamespace(scores=scores), registration=registration)
    assert final_message(result) == (
        "OOF log loss 0.8071, calibrated 0.8012 (class prior 1.0983); "
        "registry: models:/arena-pref/3 is now @champion (the first version registered)"
    )


def test_a_run_on_a_missing_file_fails_in_preflight_with_the_reason_and_no_mlflow_run(prefect_harness, tmp_path):
    from arena_pref.flows.cv_training import cv_training
    from pref_core.config.loading import load_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(
        "configs/tiny.yaml",
        [f"data.train_csv={tmp_path / 'nope.csv'}", f"tracking.uri={uri}", f"output_dir={tmp_path / 'out'}"],
    )
    state = cv_training(config, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("preflight: data.train_csv: no file") and "nope.csv" in state.message
    client = MlflowClient(uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
