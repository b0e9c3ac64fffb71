"""A tracking server lost during a run: how it is told from a blip, the one line that says what to do, and the runs
it left RUNNING, closed by the next run."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from arena_pref.tasks import tracking
from arena_pref.tasks.runs import close_abandoned_runs
from mlflow import MlflowClient


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the stdlib's name)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_health(port: int) -> http.server.HTTPServer:
    server = http.server.HTTPServer(("127.0.0.1", port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_server_that_answers_is_not_lost_and_a_local_store_never_is(free_port):
    server = serve_health(free_port)
    try:
        assert tracking.lost_server_problem(f"http://127.0.0.1:{free_port}", attempts=3, pause_s=0.01) is None
    finally:
        server.shutdown()
        server.server_close()
    assert tracking.lost_server_problem("sqlite:////nowhere/mlflow.db", attempts=3, pause_s=0.01) is None


def test_a_server_gone_for_every_try_is_lost_and_one_back_in_time_is_a_blip(free_port):
    uri = f"http://127.0.0.1:{free_port}"
    problem = tracking.lost_server_problem(uri, attempts=2, pause_s=0.01)
    assert problem is not None and "refused" in problem.lower()
    # Down at the first try, up before the second: a restart's blip, not a lost server.
    started: list[http.server.HTTPServer] = []
    timer = threading.Timer(0.05, lambda: started.append(serve_health(free_port)))
    timer.start()
    try:
        assert tracking.lost_server_problem(uri, attempts=3, pause_s=0.5) is None
    finally:
        timer.join()
        for server in started:
            server.shutdown()
            server.server_close()


def test_the_lost_server_line_says_what_is_kept_and_how_to_go_on():
    short = tracking.lost_server_error("http://h:5000", "Connection refused", "training (step 7)")
    assert isinstance(short, tracking.TrackingLostError) and "\n" not in str(short)
    assert str(short).startswith("MLflow tracking server http://h:5000 stopped answering during training (step 7)")
    assert "(Connection refused)" in str(short) and "kept on disk" in str(short) and "Resume with" not in str(short)
    full = tracking.lost_server_error(
        "http://h:5000", "timed out", "the run", "on disk in /p/runs", "arena-pref train --config c.yaml", Path("/l")
    )
    assert "kept on disk in /p/runs" in str(full) and "finished folds are reused" in str(full)
    assert str(full).endswith(". Resume with: arena-pref train --config c.yaml (full log: /l)")


def test_runs_left_running_by_an_ended_process_are_closed_by_the_next_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("lost")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    here = socket.gethostname()

    def parent(host: str, pid: int) -> str:
        tags = {tracking.TAG_KIND: "cv", tracking.TAG_HOST: host, tracking.TAG_PID: str(pid)}
        return client.create_run(experiment, tags=tags).info.run_id

    def fold(parent_id: str, pid: int) -> str:
        tags = {tracking.TAG_PARENT: parent_id, tracking.TAG_HOST: here, tracking.TAG_PID: str(pid)}
        return client.create_run(experiment, tags=tags).info.run_id

    abandoned = parent(here, ended.pid)
    abandoned_fold, finished_fold = fold(abandoned, ended.pid), fold(abandoned, ended.pid)
    client.set_terminated(finished_fold, "FINISHED")
    live = parent(here, os.getpid())  # a run whose process still runs (another run beside this one)
    live_fold = fold(live, os.getpid())
    elsewhere = parent("another-host", ended.pid)  # cannot be told from here
    new = parent(here, os.getpid())

    assert close_abandoned_runs(client, experiment, new) == [abandoned]
    status = {run_id: client.get_run(run_id).info.status for run_id in (abandoned, abandoned_fold, finished_fold)}
    assert status == {abandoned: "FAILED", abandoned_fold: "FAILED", finished_fold: "FINISHED"}
    why = client.get_run(abandoned).data.tags[tracking.TAG_ABANDONED]
    assert f"process {ended.pid} on {here}" in why and new in why
    assert client.get_run(abandoned).info.end_time is not None
    for untouched in (live, live_fold, elsewhere, new):
        assert client.get_run(untouched).info.status == "RUNNING"
    assert close_abandoned_runs(client, experiment, new) == []  # once closed, closed


class _RacingClient:
    """log_inputs fails like MLflow's SQL store when another run inserted the same dataset first, `collisions` times."""

    def __init__(self, collisions: int, error: str = "UNIQUE constraint failed: datasets.experiment_id"):
        self.collisions, self.error, self.calls = collisions, error, 0

    def log_inputs(self, run_id, datasets):
        self.calls += 1
        if self.calls <= self.collisions:
            raise RuntimeError(f"(sqlite3.IntegrityError) {self.error}")


def test_dataset_inputs_that_collide_with_another_runs_are_logged_on_a_retry():
    racing = _RacingClient(collisions=1)
    tracking.log_dataset_inputs(racing, "r1", [])
    assert racing.calls == 2
    always = _RacingClient(collisions=5)
    with pytest.raises(RuntimeError, match="UNIQUE constraint"):
        tracking.log_dataset_inputs(always, "r1", [], attempts=3)
    assert always.calls == 3
    other = _RacingClient(collisions=1, error="no such table: datasets")  # not the race: no retry
    with pytest.raises(RuntimeError, match="no such table"):
        tracking.log_dataset_inputs(other, "r1", [])
    assert other.calls == 1
