"""One Ctrl-C stops `arena-pref train` cleanly, a second one exits at once, and the rerun resumes (issue 24 item 4).

A real `arena-pref train` process (tiny model) runs in a session of its own; SIGINT goes to its whole process group,
as the terminal sends it on Ctrl-C, once a fold has written its first checkpoint.
"""

from __future__ import annotations

import os
import shlex
import signal
import time

import pytest

from pref_core.data.synthetic import write_synthetic_csvs
from tests.train_process import (
    alive,
    flow_run_states,
    role,
    run,
    runs,
    start,
    store_uri,
    train_args,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow


def test_one_ctrl_c_stops_parallel_fold_processes_and_the_rerun_resumes(tmp_path):
    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=5)
    args = train_args(tmp_path, train_csv, "cv.execution=subprocess", "cv.max_parallel=2", "cv.folds=[0, 1]")
    proc = start(tmp_path, args)
    wait_for_checkpoint(tmp_path, proc)
    fold_runs = [r for r in runs(store_uri(tmp_path)) if role(r) != "parent" and "arena_pref.pid" in r.data.tags]
    fold_pids = [int(r.data.tags["arena_pref.pid"]) for r in fold_runs]
    assert fold_pids, "no fold process recorded its pid"

    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    while any(alive(pid) for pid in fold_pids) and time.monotonic() - sent < 30:
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

    statuses = {role(r): r.info.status for r in runs(store_uri(tmp_path))}
    assert statuses == {"parent": "KILLED", "fold-0": "KILLED", "fold-1": "KILLED"}
    states = flow_run_states(tmp_path)
    assert states and set(states.values()) == {"CANCELLED"}, states

    # The printed command resumes from the checkpoints.
    rerun = run(tmp_path, shlex.split(resume)[1:])
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    finished = [r for r in runs(store_uri(tmp_path)) if r.info.status == "FINISHED"]
    assert sorted(role(r) for r in finished) == ["fold-0", "fold-1", "parent"]
    resumed = [r.data.tags.get("arena_pref.resumed_from") for r in finished if role(r) != "parent"]
    assert any(resumed), resumed


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=6)
    proc = start(tmp_path, train_args(tmp_path, train_csv, "cv.execution=in_process", "cv.folds=[0]"))
    wait_for_checkpoint(tmp_path, proc)
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
