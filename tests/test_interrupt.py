"""One Ctrl-C stops `arena-pref train` cleanly, a second one exits at once, and the rerun resumes (issue 24 item 4).

A real `arena-pref train` process (tiny model) runs in a session of its own; SIGINT goes to its whole process group,
as the terminal sends it on Ctrl-C, once a fold has written its first checkpoint.
"""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow import MlflowClient
from pref_core.data.synthetic import write_synthetic_csvs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def _environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "HF_HUB_OFFLINE": "1"}


def _train_args(tmp_path: Path, train_csv: Path, *overrides: str) -> list[str]:
    sets = [
        f"data.train_csv={train_csv}",
        f"output_dir={tmp_path / 'out'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.num_epochs=4",
        "train.save_steps=2",
        *overrides,
    ]
    return ["train", "--config", str(TINY), *(a for s in sets for a in ("--set", s))]


def _start(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "arena_pref.cli", *args],
        cwd=tmp_path,
        env=_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, which gets the SIGINT as a terminal's would
    )


def _wait_for_checkpoint(tmp_path: Path, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    pattern = "out/runs/*/fold_*/checkpoints/checkpoint-*/trainer_state.json"
    while not list(tmp_path.glob(pattern)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)


def _runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("arena-pref")
    return client.search_runs([experiment.experiment_id])


def _role(run) -> str:
    """'parent' or 'fold-k': run names carry the recipe and overrides, the fold tag says which run is which."""
    fold = run.data.tags.get("arena_pref.fold")
    return "parent" if fold is None else f"fold-{fold}"


def _flow_run_states(tmp_path: Path) -> dict[str, str]:
    """name -> state type of every Prefect flow run in the run's local history (PREFECT_HOME)."""
    (db,) = (tmp_path / "prefect").glob("*.db")
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT name, state_type FROM flow_run"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_one_ctrl_c_stops_parallel_fold_processes_and_the_rerun_resumes(tmp_path):
    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=5)
    args = _train_args(tmp_path, train_csv, "cv.execution=subprocess", "cv.max_parallel=2", "cv.folds=[0, 1]")
    proc = _start(tmp_path, args)
    _wait_for_checkpoint(tmp_path, proc)
    fold_runs = [r for r in _runs(tmp_path) if _role(r) != "parent" and "arena_pref.pid" in r.data.tags]
    fold_pids = [int(r.data.tags["arena_pref.pid"]) for r in fold_runs]
    assert fold_pids, "no fold process recorded its pid"

    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    while any(_alive(pid) for pid in fold_pids) and time.monotonic() - sent < 30:
        time.sleep(0.05)
    folds_ended_s = time.monotonic() - sent
    output = proc.communicate(timeout=120)[0]
    exit_s = time.monotonic() - sent
    print(f"fold processes ended {folds_ended_s:.1f} s after SIGINT; the command exited after {exit_s:.1f} s")

    assert folds_ended_s <= 10, output
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    stop_lines = [line for line in output.splitlines() if line.startswith("stopped (Ctrl-C)")]
    assert len(stop_lines) == 1, output
    resume = stop_lines[0].split("Resume with: ")[1]
    assert shlex.split(resume) == ["arena-pref", *args]

    statuses = {_role(r): r.info.status for r in _runs(tmp_path)}
    assert statuses == {"parent": "KILLED", "fold-0": "KILLED", "fold-1": "KILLED"}
    states = _flow_run_states(tmp_path)
    assert states and set(states.values()) == {"CANCELLED"}, states

    # The printed command resumes from the checkpoints.
    rerun = subprocess.run(
        [sys.executable, "-m", "arena_pref.cli", *shlex.split(resume)[1:]],
        cwd=tmp_path,
        env=_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    finished = [r for r in _runs(tmp_path) if r.info.status == "FINISHED"]
    assert sorted(_role(r) for r in finished) == ["fold-0", "fold-1", "parent"]
    resumed = [r.data.tags.get("arena_pref.resumed_from") for r in finished if _role(r) != "parent"]
    assert any(resumed), resumed


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=6)
    proc = _start(tmp_path, _train_args(tmp_path, train_csv, "cv.execution=in_process", "cv.folds=[0]"))
    _wait_for_checkpoint(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    output = proc.communicate(timeout=60)[0]
    assert time.monotonic() - sent < 5, output
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.startswith("stopped")] == [
        "stopped at once (second Ctrl-C); a rerun of the same command resumes"
    ], output
