"""The model registry: promotion rules on a temporary SQLite store, and the registered pyfunc loading and
predicting with every unpickler refusing."""

from __future__ import annotations

from pathlib import Path

import pytest

from arena_pref.tasks.registry import CHAMPION, compare_with_champion, promote
from mlflow import MlflowClient

NAME = "arena-pref-test"


@pytest.fixture
def client(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client


def _version(client, oof: float, data_hash: str = "d1", n_oof: int = 100):
    tags = {"oof_log_loss": f"{oof:.6f}", "data_hash": data_hash, "n_oof": str(n_oof), "n_folds": "5"}
    version = client.create_model_version(NAME, source="file:///nowhere", tags=tags)
    return client.get_model_version(NAME, version.version)


def test_first_version_becomes_champion(client):
    first = _version(client, 0.95)
    assert compare_with_champion(client, NAME, first) == (True, "no champion yet")


def test_better_version_on_same_data_is_promoted_worse_is_not(client):
    first = _version(client, 0.95)
    promote(client, NAME, first.version, "first")
    better = _version(client, 0.93)
    ok, reason = compare_with_champion(client, NAME, better)
    assert ok and "beats champion v1" in reason
    promote(client, NAME, better.version, reason)
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == better.version
    worse = _version(client, 0.94)
    ok, reason = compare_with_champion(client, NAME, worse)
    assert not ok and "does not beat champion v2" in reason


def test_versions_on_other_data_or_rows_are_not_compared(client):
    promote(client, NAME, _version(client, 0.95).version, "first")
    other_data = _version(client, 0.50, data_hash="d2")
    ok, reason = compare_with_champion(client, NAME, other_data)
    assert not ok and "trained on data d1" in reason and "arena-pref promote" in reason
    other_rows = _version(client, 0.50, n_oof=40)
    ok, reason = compare_with_champion(client, NAME, other_rows)
    assert not ok and "40" in reason and "100" in reason


# -- the registered pyfunc loads and predicts without unpickling anything ------------------------------------------


def _echo_model():
    """A model saved the unsafe way: python_model=<object>, which MLflow cloudpickles."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    return Echo()


@pytest.fixture
def registered(tmp_path, synthetic_frames):
    """Two fold adapters (untrained but non-zero) over a tiny base, registered by the registry task itself."""
    from types import SimpleNamespace

    import pandas as pd
    import torch
    from transformers import AutoTokenizer

    from arena_pref.tasks.evaluation import OOFOutput
    from arena_pref.tasks.registry import register_model
    from pref_core.config.loading import parse_config
    from pref_core.evaluate.oof import OOFScores
    from pref_core.model.preference import build_model, save_adapter
    from tests.factories import tiny_base

    base = tiny_base(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = parse_config(
        {
            "model": {"name_or_path": str(base), "head": "classifier", "dtype": "fp32"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
            "prompt": {"max_length": 64},
            "train": {"seed": 0, "eval_batch_size": 4, "tta_swap": True},
            "tracking": {"uri": uri, "registered_model": NAME, "experiment": "registry-test"},
            "output_dir": str(tmp_path / "out"),
        }
    )
    client = MlflowClient(uri)
    experiment = client.create_experiment("registry-test")
    adapters, fold_runs = [], {}
    for fold in range(2):
        model = build_model(config.model, config.lora, tokenizer, name_or_path=base, seed=config.train.seed)
        generator = torch.Generator().manual_seed(10 + fold)
        with torch.no_grad():  # LoRA B starts at zero: make the folds differ from the base and each other
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        adapters.append(save_adapter(model, tmp_path / "adapters" / f"fold_{fold}", tokenizer))
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(adapters[-1]), "adapter")
        fold_runs[fold] = run.info.run_id
    parsed = tmp_path / "train.parquet"
    pd.DataFrame({"label": [0, 1, 2, 0]}).to_parquet(parsed)
    prepared = SimpleNamespace(
        base_model=str(base), train=SimpleNamespace(parsed_path=str(parsed)), train_hash="d1", run_key="k1"
    )
    scores = OOFScores(
        log_loss=0.9,
        accuracy=0.5,
        prior_log_loss=1.0,
        n_oof=4,
        temperature=1.5,
        fitted_temperature=1.5,
        calibrated_log_loss=0.85,
    )
    oof = OOFOutput(oof_path="", scores=scores, fold_log_loss={})
    parent = client.create_run(experiment).info.run_id
    result = register_model.fn(config, parent, fold_runs, prepared, oof)
    client.set_terminated(parent)
    return {
        "uri": uri,
        "model_uri": result.model_uri,
        "config": config,
        "adapters": adapters,
        "base": base,
        "test": synthetic_frames[1].head(6),
        "register": lambda run_key, oof_output, run_config=config: register_model.fn(
            run_config,
            client.create_run(experiment).info.run_id,
            fold_runs,
            SimpleNamespace(**{**vars(prepared), "run_key": run_key}),
            oof_output,
        ),
        "oof": oof,
    }


def test_registered_model_loads_and_predicts_with_every_unpickler_refusing(registered, monkeypatch):
    import pickle

    import numpy as np
    import torch

    import mlflow
    from pref_core.data.arena import validate_arena_frame
    from pref_core.data.labels import LABEL_COLUMNS
    from pref_core.predict.ensemble import predict_frame_probabilities

    calls = []

    def refuse(name):
        def _refused(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called while loading or using the registered model")

        return _refused

    targets = [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]
    try:
        import cloudpickle

        targets += [(cloudpickle, "load"), (cloudpickle, "loads")]
    except ImportError:
        pass
    mlflow.set_tracking_uri(registered["uri"])
    with monkeypatch.context() as patch:
        for module, attr in targets:
            patch.setattr(module, attr, refuse(f"{module.__name__}.{attr}"))
        model = mlflow.pyfunc.load_model(registered["model_uri"])
        predicted = model.predict(registered["test"])
    assert calls == []

    # The refusal is real: a pyfunc logged as a Python object (cloudpickled) does not load under it.
    with mlflow.start_run():
        pickled = mlflow.pyfunc.log_model(name="pickled", python_model=_echo_model())
    with monkeypatch.context() as patch:
        for module, attr in targets:
            patch.setattr(module, attr, refuse(f"{module.__name__}.{attr}"))
        with pytest.raises(Exception):
            mlflow.pyfunc.load_model(pickled.model_uri)
    assert calls

    # It predicts with the registered adapters and calibration: the same numbers as the fold ensemble itself.
    frame = validate_arena_frame(registered["test"], kind="test", max_bad_fraction=0.0, source="test").frame
    config = registered["config"]
    sections = dict(
        batch_size=config.train.eval_batch_size, tta_swap=config.train.tta_swap, base_model=str(registered["base"])
    )
    expected = predict_frame_probabilities(
        config.model, config.prompt, registered["adapters"], frame, temperature=1.5, **sections
    )
    assert predicted["id"].tolist() == registered["test"]["id"].tolist()
    np.testing.assert_allclose(predicted[list(LABEL_COLUMNS)].to_numpy(), expected, atol=1e-5)
    uncalibrated = predict_frame_probabilities(
        config.model, config.prompt, registered["adapters"], frame, temperature=1.0, **sections
    )
    assert not np.allclose(uncalibrated, expected, atol=1e-4)  # the temperature really is applied

    # What MLflow stored is the model's code and its bundle: no pickled object anywhere in the artifact.
    local = Path(mlflow.artifacts.download_artifacts(registered["model_uri"]))
    assert not [p for p in local.rglob("*") if p.suffix in {".pkl", ".pickle", ".bin", ".pt", ".pth"}]


def test_an_identical_rerun_registers_nothing_and_says_which_version_holds_it(registered):
    client = MlflowClient(registered["uri"])
    again = registered["register"]("k1", registered["oof"])  # the same run key as version 1
    assert not again.registered and again.version == "1" and again.model_uri == f"models:/{NAME}/1"
    assert "identical to version 1" in again.in_words() and "nothing registered" in again.in_words()
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]


def test_a_model_no_better_than_the_prior_is_registered_with_a_warning_and_no_alias(registered):
    from dataclasses import replace

    client = MlflowClient(registered["uri"])
    oof = registered["oof"]
    worse = replace(oof, scores=replace(oof.scores, log_loss=1.2, calibrated_log_loss=1.1))
    result = registered["register"]("k2", worse)
    assert result.registered and result.version == "2" and not result.promoted
    assert "does not beat the class prior" in result.warnings[0]
    assert "WITHOUT an alias" in result.in_words()
    version = client.get_model_version(NAME, "2")
    assert "does not beat the class prior" in version.tags["arena_pref.warning"] and not version.aliases
    model = client.get_registered_model(NAME)
    assert {k: str(v) for k, v in model.aliases.items()} == {"challenger": "1", "champion": "1"}  # unchanged


def test_a_rerun_that_only_changes_post_processing_is_another_version(registered):
    client = MlflowClient(registered["uri"])
    config = registered["config"]
    off = config.model_copy(update={"postprocess": config.postprocess.model_copy(update={"mode": "off"})})
    before = {str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")}
    result = registered["register"]("k1", registered["oof"], off)  # version 1's run key: the same folds
    assert result.registered and result.version not in before
    tags = client.get_model_version(NAME, result.version).tags
    assert tags["run_key"] == "k1" and tags["model_key"] != client.get_model_version(NAME, "1").tags["model_key"]
    again = registered["register"]("k1", registered["oof"], off)
    assert not again.registered and again.version == result.version
