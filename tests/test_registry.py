"""Promotion rules of the model registry, on a temporary SQLite store (no training needed)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from arena_pref.tasks.registry import CHAMPION, decide_promotion, promote

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
    assert decide_promotion(client, NAME, first) == (True, "no champion yet")


def test_better_version_on_same_data_is_promoted_worse_is_not(client):
    first = _version(client, 0.95)
    promote(client, NAME, first.version, "first")
    better = _version(client, 0.93)
    ok, reason = decide_promotion(client, NAME, better)
    assert ok and "beats champion v1" in reason
    promote(client, NAME, better.version, reason)
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == better.version
    worse = _version(client, 0.94)
    ok, reason = decide_promotion(client, NAME, worse)
    assert not ok and "does not beat champion v2" in reason


def test_versions_on_other_data_or_rows_are_not_compared(client):
    promote(client, NAME, _version(client, 0.95).version, "first")
    other_data = _version(client, 0.50, data_hash="d2")
    ok, reason = decide_promotion(client, NAME, other_data)
    assert not ok and "trained on data d1" in reason and "arena-pref promote" in reason
    other_rows = _version(client, 0.50, n_oof=40)
    ok, reason = decide_promotion(client, NAME, other_rows)
    assert not ok and "40" in reason and "100" in reason
