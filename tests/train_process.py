"""Helpers for tests that drive a real `arena-pref train` process (tiny recipe) from outside: start it in a session of
its own, wait for its first checkpoint, read its MLflow runs and Prefect flow runs, tell whether a pid still runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "HF_HUB_OFFLINE": "1"}


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def train_args(tmp_path: Path, train_csv: Path, *overrides: str, tracking_uri: str = "") -> list[str]:
    """`train` on the tiny recipe with outputs under tmp_path/out (tracking: `tracking_uri`, else tmp_path's SQLite
    store), 4 epochs and a checkpoint every 2 steps; `overrides` come last."""
    sets = [
        f"data.train_csv={train_csv}",
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri={tracking_uri or store_uri(tmp_path)}",
        "train.num_epochs=4",
        "train.save_steps=2",
        *overrides,
    ]
    return ["train", "--config", str(TINY), *(a for s in sets for a in ("--set", s))]


def start(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "arena_pref.cli", *args],
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, which gets the SIGINT as a terminal's would
    )


def run(
    tmp_path: Path, args: list[str], timeout_s: float = 900, extra_env: Optional[dict[str, str]] = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "arena_pref.cli", *args],
        cwd=tmp_path,
        env={**environment(tmp_path), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_for_checkpoint(tmp_path: Path, proc: subprocess.Popen, timeout_s: float = 600, fold: str = "*") -> list[Path]:
    """The first complete checkpoint folder(s) of `fold` ("*": any fold), waiting while `proc` runs."""
    deadline = time.monotonic() + timeout_s
    pattern = f"out/runs/*/fold_{fold}/checkpoints/checkpoint-*/trainer_state.json"
    while not (found := list(tmp_path.glob(pattern))):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    return [path.parent for path in found]


def runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("arena-pref")
    return client.search_runs([experiment.experiment_id])


def role(run) -> str:
    """'parent' or 'fold-k': run names carry the recipe and overrides, the fold tag says which run is which."""
    fold = run.data.tags.get("arena_pref.fold")
    return "parent" if fold is None else f"fold-{fold}"


def flow_run_states(tmp_path: Path) -> dict[str, str]:
    """name -> state type of every Prefect flow run in the run's local history (PREFECT_HOME)."""
    (db,) = (tmp_path / "prefect").glob("*.db")
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT name, state_type FROM flow_run"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")
