"""Faults during a run (issue 27 item 8): runs that start at the same moment on a brand-new SQLite store; the MLflow
tracking server killed while a fold trains."""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow import MlflowClient
from pref_core.data.synthetic import write_synthetic_csvs
from pref_core.train import disk_space
from tests import servers
from tests.train_process import (
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


# -- the MLflow server killed during a fold ---------------------------------------------------------------------------


def _start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` over the SQLite store and artifact folder in `folder`, in a session of its
    own (the test kills exactly its process group); answers /health when this returns."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
                *("--artifacts-destination", str(folder / "artifacts")),
                *("--workers", "1", "--host", "127.0.0.1", "--port", str(port)),
            ],
            cwd=folder,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if not servers.wait_http_ok(f"http://127.0.0.1:{port}/health", 180, lambda: proc.poll() is None):
        servers.stop_group(proc.pid)
        pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
    return proc


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_the_tracking_server_killed_mid_fold_stops_the_run_in_one_line_and_the_rerun_goes_on(tmp_path):
    port = servers.free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_mlflow_server(tmp_path / "store", port)
    try:
        train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=7)
        # A fold of 10 epochs (~120 steps, 15-20 s here) is still training when the server's loss is noticed (5 s
        # between checks, 2 s of retries); fold 0 has finished when fold 1's first checkpoint appears.
        args = train_args(tmp_path, train_csv, "cv.folds=[0, 1]", "train.num_epochs=10", tracking_uri=uri)
        proc = start(tmp_path, args)
        wait_for_checkpoint(tmp_path, proc, fold="1")
        _kill_group(server)
        killed = time.monotonic()
        output = proc.communicate(timeout=300)[0]
        exit_s = time.monotonic() - killed
        print(f"`arena-pref train` exited {exit_s:.1f} s after the tracking server was killed")

        assert exit_s <= 60, output
        assert proc.returncode == 2, output
        assert "Traceback" not in output
        naming = [line for line in output.splitlines() if uri in line]
        assert len(naming) == 1, output
        assert naming[0].startswith(f"error: MLflow tracking server {uri} stopped answering during the run"), output
        assert "checkpoints and adapters are kept on disk" in naming[0]
        assert "Start the server again" in naming[0] and "finished folds are reused" in naming[0]
        assert "the run failed" not in output  # the one line says it all
        assert list(tmp_path.glob("out/runs/*/fold_0/adapter/adapter_model.safetensors"))
        assert list(tmp_path.glob("out/runs/*/fold_1/checkpoints/checkpoint-*/trainer_state.json"))

        # The server back on the same address and store: the printed command finishes the run.
        server = _start_mlflow_server(tmp_path / "store", port)
        resume = shlex.split(naming[0].split("Resume with: ")[1].split(" (full log: ")[0])
        assert resume == ["arena-pref", *args]
        rerun = run(tmp_path, resume[1:])
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert "reusing fold 0" in rerun.stdout + rerun.stderr
        (parent,) = [r for r in runs(uri) if role(r) == "parent" and r.info.status == "FINISHED"]
        folds = {role(r): r for r in runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert {name: r.info.status for name, r in folds.items()} == {"fold-0": "FINISHED", "fold-1": "FINISHED"}
        assert folds["fold-0"].data.tags.get("arena_pref.reused") == "true"
        assert "checkpoint-" in folds["fold-1"].data.tags.get("arena_pref.resumed_from", "")
        # The first attempt's runs, left RUNNING when the server died, were closed by the rerun.
        (first,) = [r for r in runs(uri) if role(r) == "parent" and r.info.run_id != parent.info.run_id]
        assert first.info.status == "FAILED" and parent.info.run_id in first.data.tags["arena_pref.abandoned"]
        first_folds = [r for r in runs(uri) if r.data.tags.get("mlflow.parentRunId") == first.info.run_id]
        assert first_folds and all(r.info.status != "RUNNING" for r in first_folds)
    finally:
        _kill_group(server)


# -- one fold process killed while another trains (cv.max_parallel=2) -------------------------------------------------


def test_a_fold_process_killed_beside_another_is_retried_and_resumes_while_the_other_finishes(tmp_path):
    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=8)
    args = train_args(
        tmp_path, train_csv, "cv.execution=subprocess", "cv.max_parallel=2", "cv.folds=[0, 1]", "train.num_epochs=6"
    )
    proc = start(tmp_path, args)
    (checkpoint,) = wait_for_checkpoint(tmp_path, proc, fold="0")[:1]
    deadline = time.monotonic() + 120
    while not all("arena_pref.pid" in r.data.tags for r in runs(store_uri(tmp_path)) if role(r) != "parent"):
        assert time.monotonic() < deadline and proc.poll() is None, "the fold processes did not record their pids"
        time.sleep(0.2)
    pids = {role(r): int(r.data.tags["arena_pref.pid"]) for r in runs(store_uri(tmp_path)) if role(r) != "parent"}
    os.kill(pids["fold-0"], signal.SIGKILL)
    output = proc.communicate(timeout=600)[0]

    assert proc.returncode == 0, output
    assert "Traceback" not in output
    finished = {role(r): r for r in runs(store_uri(tmp_path)) if r.info.status == "FINISHED"}
    assert sorted(finished) == ["fold-0", "fold-1", "parent"], output
    # The killed fold: a second attempt in the same MLflow run, from a checkpoint its first process wrote.
    killed = finished["fold-0"].data.tags
    assert killed["arena_pref.attempt"] == "2" and int(killed["arena_pref.pid"]) != pids["fold-0"]
    assert "checkpoint-" in killed["arena_pref.resumed_from"]
    assert Path(killed["arena_pref.resumed_from"]).parent == checkpoint.parent
    # The other fold trained once, in the process it started in, and was never resumed.
    other = finished["fold-1"].data.tags
    assert other["arena_pref.attempt"] == "1" and int(other["arena_pref.pid"]) == pids["fold-1"]
    assert "arena_pref.resumed_from" not in other
    states = flow_run_states(tmp_path)
    assert {name: state for name, state in states.items() if name.startswith("fold-")} == {
        "fold-0": "FAILED",
        "fold-0-attempt-2": "COMPLETED",
        "fold-1": "COMPLETED",
    }


# -- a full disk while a checkpoint is written ------------------------------------------------------------------------

# Loaded by every process of the faulty run (PYTHONPATH): the disk is "full" when a fold's second checkpoint writes its
# optimizer state (its adapter is already in the folder: a half-written checkpoint, as a real full disk leaves it).
_FULL_DISK_AT_SECOND_CHECKPOINT = """
import errno
import torch
real_save, optimizer_saves = torch.save, []
def save(obj, f, *args, **kwargs):
    if str(f).endswith("optimizer.pt"):
        optimizer_saves.append(f)
        if len(optimizer_saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path):
    """In a fold process (the default cv.execution): its one line travels through the fold's MLflow run to the
    parent's console as it is (cv.execution=in_process passed the same checks: 127 s, left out to save time)."""
    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=120, n_test=10, signal=0.9, seed=9)
    args = train_args(tmp_path, train_csv, "cv.execution=subprocess", "cv.folds=[0]", "train.num_epochs=2")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_FULL_DISK_AT_SECOND_CHECKPOINT, encoding="utf-8")
    full = run(tmp_path, args, timeout_s=600, extra_env={"PYTHONPATH": str(inject)})
    output = full.stdout + full.stderr
    assert full.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    (checkpoints,) = tmp_path.glob("out/runs/*/fold_0/checkpoints")
    assert errors[0].startswith(f"error: fold 0: no space left on the disk of {checkpoints} while writing a checkpoint")
    # The free space it asks for is the size of the complete checkpoint before (the estimate of the next one).
    complete = checkpoints / "checkpoint-2"
    assert (complete / "trainer_state.json").is_file() and not (
        checkpoints / "checkpoint-4" / "trainer_state.json"
    ).exists()
    size = sum(p.stat().st_size for p in complete.rglob("*") if p.is_file())
    assert f"a checkpoint needs about {disk_space.format_bytes(size)} free there" in errors[0], errors[0]
    assert "rerun the same command" in errors[0]

    rerun = run(tmp_path, args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    (fold_run,) = [r for r in runs(store_uri(tmp_path)) if role(r) == "fold-0" and r.info.status == "FINISHED"]
    assert fold_run.data.tags["arena_pref.resumed_from"] == str(complete)


def test_what_counts_as_a_full_disk(tmp_path):
    """ENOSPC anywhere in the chain; torch's short write only when the disk really lacks the space."""
    assert disk_space.format_bytes(512) == "512 B" and disk_space.format_bytes(1536) == "1.5 KiB"
    assert disk_space.format_bytes(3 * 1024**3) == "3.0 GiB"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert disk_space.is_disk_full(full, tmp_path, 1)
    try:
        raise RuntimeError("saving failed") from full
    except RuntimeError as wrapped:
        assert disk_space.is_disk_full(wrapped, tmp_path, 1)
    short_write = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 11200 vs 11088")
    assert disk_space.is_disk_full(short_write, tmp_path, disk_space.free_bytes(tmp_path) + 1)
    assert not disk_space.is_disk_full(short_write, tmp_path, 1)  # space enough: some other write failure
    assert not disk_space.is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path, 1)
    assert disk_space.checkpoint_bytes(None, trainable_parameters=1000) == 12_000


class _Ended:
    """A finished fold future: its result, or the error it ended with."""

    def __init__(self, error=None):
        self.error = error

    def result(self):
        if self.error is not None:
            raise self.error
        return "flow-run-id"


def test_one_failed_fold_is_one_line_and_several_are_one_line_each():
    from arena_pref.tasks.fold_launcher import raise_failed_folds
    from arena_pref.tasks.training import FoldFailedError

    full = "fold 1: no space left on the disk of /out/runs/k/fold_1/checkpoints while writing a checkpoint"
    raise_failed_folds([_Ended(), _Ended()])  # nothing failed: nothing raised
    with pytest.raises(FoldFailedError) as one:
        raise_failed_folds([_Ended(), _Ended(FoldFailedError(full))])
    assert str(one.value) == full
    with pytest.raises(FoldFailedError) as two:
        raise_failed_folds([_Ended(FoldFailedError("fold 0: killed")), _Ended(FoldFailedError(full))])
    assert str(two.value).splitlines() == ["2 fold(s) failed:", "fold 0: killed", full]
