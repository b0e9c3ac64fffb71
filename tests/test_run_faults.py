"""Faults during a run (issue 27 item 8): runs that start at the same moment on a brand-new SQLite store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlflow import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# What `open-parent-run` does first in every run: check the store (creating it), then find or create the experiment.
_OPEN_STORE = """
import sys
from arena_pref.tasks import tracking
from mlflow import MlflowClient
uri = sys.argv[1]
tracking.check_tracking_reachable(uri)
print(tracking.ensure_experiment(MlflowClient(uri), "arena-pref"))
"""


def test_runs_starting_together_on_a_new_sqlite_store_all_open_it(tmp_path):
    """Without the store lock, MLflow's table creation collides: 11 of 12 such processes failed (3 tries of 4)."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STORE, uri],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(p.communicate(timeout=900), p.returncode) for p in procs]
    for (_, err), code in results:
        assert code == 0, err[-3000:]
    experiment_ids = {out.strip().splitlines()[-1] for (out, _), _ in results}
    assert len(experiment_ids) == 1  # one experiment, found by all
    assert MlflowClient(uri).get_experiment_by_name("arena-pref") is not None
