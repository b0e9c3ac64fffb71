"""The one typed fold result (pref_core.train.result.FoldResult): saved and loaded in one place, and a result.json
of a fold that an earlier version finished still loads (the fold is reused, not retrained)."""

from __future__ import annotations

import json
from pathlib import Path

from pref_core.train.result import RESULT_FILE, FoldResult


def test_a_fold_result_round_trips_through_its_file(tmp_path):
    result = FoldResult(
        fold_dir=tmp_path,
        adapter_dir=tmp_path / "adapter",
        val_predictions=tmp_path / "val_predictions.parquet",
        metrics={"val_log_loss": 0.61, "global_step": 12},
        test_predictions=tmp_path / "test_predictions.parquet",
        resumed_from=str(tmp_path / "checkpoints" / "checkpoint-4"),
    )
    path = result.save(tmp_path / RESULT_FILE)
    assert json.loads(path.read_text())["adapter_dir"] == str(tmp_path / "adapter")  # plain JSON, paths as text
    assert FoldResult.load(path) == result
    assert isinstance(FoldResult.load(path).val_predictions, Path)


def test_a_result_written_by_the_earlier_fold_task_loads(tmp_path):
    """result.json as the fit-fold task wrote it before FoldResult was the one shape (FoldOutput)."""
    old = {
        "fold": 2,
        "mlflow_run_id": "abc",
        "fold_dir": str(tmp_path),
        "adapter_dir": str(tmp_path / "adapter"),
        "val_predictions": str(tmp_path / "val_predictions.parquet"),
        "test_predictions": None,
        "metrics": {"val_log_loss": 0.7, "global_step": 10.0},
        "reused": False,
        "train_predictions": None,
    }
    (tmp_path / RESULT_FILE).write_text(json.dumps(old))
    loaded = FoldResult.load(tmp_path / RESULT_FILE)
    assert loaded.adapter_dir == tmp_path / "adapter" and loaded.metrics == {"val_log_loss": 0.7, "global_step": 10.0}
    assert loaded.test_predictions is None and loaded.resumed_from is None and not loaded.reused
