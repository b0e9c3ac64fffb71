"""One Ctrl-C stops `arena-pref train` / `demo` cleanly; a second one exits at once.

The terminal sends SIGINT to its whole foreground process group. So that the parent alone decides how the run stops,
the processes it starts leave that group: fold processes make a group of their own (arena_pref.tasks.stopping), and
the run's Prefect API server (PrefectServer, instead of the temporary one Prefect would start in the terminal's group)
runs in a session of its own, where a Ctrl-C cannot kill it while the parent still needs it to record the stop.

First Ctrl-C: KeyboardInterrupt in the parent, which ends the fold processes (SIGTERM, then SIGKILL after 5 s), marks
the MLflow runs KILLED and the Prefect flow runs Cancelled, and prints one line with the command that resumes.
Second Ctrl-C: every fold process group and the temporary server are killed and the process exits (code 130).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, Optional, Sequence, TextIO

from pref_core.errors import UserError

LOGGER = logging.getLogger(__name__)
EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C


class RunStopped(UserError):
    """The user stopped the run with Ctrl-C; the message says what stopped and the command that resumes."""


def resume_command(argv: Sequence[str]) -> str:
    """The command that resumes: the same one, without --force (which would retrain the finished folds)."""
    return shlex.join(["arena-pref", *(a for a in argv if a not in ("--force", "-f"))])


def die_with_parent():
    """A preexec function (resolved before the fork: nothing to import or look up in the child) that asks Linux to
    SIGTERM the child when this process dies; None elsewhere."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class PrefectServer:
    """A Prefect API server for one run (`prefect server start`, without the UI) in a session of its own: the terminal's
    Ctrl-C cannot kill it while the parent still needs it to record the stop. Ended by `stop` (or with this process)."""

    def __init__(self, process: subprocess.Popen, api_url: str):
        self.process = process
        self.api_url = api_url

    @classmethod
    def start(cls, timeout_s: float = 300.0) -> Optional[PrefectServer]:
        """The server once it answers; None when it does not come up (Prefect then starts its own temporary one)."""
        import socket
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {
            **os.environ,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # nothing to schedule: the run starts its flows
        }
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(
            command,  # with its services: task runs reach the API as events, which a service records
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 (resolved before the fork; only a prctl call runs there)
        )
        server = cls(process, f"http://127.0.0.1:{port}/api")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(server.api_url + "/health", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return server
            except OSError:
                time.sleep(0.25)
        LOGGER.warning("the run's Prefect server did not start (exit code %s); using Prefect's own", process.poll())
        server.stop()
        return None

    def stop(self, grace_s: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def prefect_server_apart() -> Iterator[Optional[PrefectServer]]:
    """Run the body against a PrefectServer of its own, unless the user configured one (PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield None
        return
    server = PrefectServer.start()
    if server is None:
        yield None
        return
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server
            finally:
                _deliver_pending_logs()
    finally:
        server.stop()


def _deliver_pending_logs(timeout_s: float = 10.0) -> None:
    """Send the run's queued Prefect logs and events while its server still answers. Left queued, they are sent at
    interpreter exit to a server that is gone, and Prefect's client retries them for over a minute (a run whose
    MLflow server died took 90 s to exit after its error line)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout_s)
        except Exception:  # noqa: BLE001 (delivery of logs must never replace the run's own outcome)
            LOGGER.warning("could not deliver the run's pending Prefect %s", worker.__name__, exc_info=True)


@contextlib.contextmanager
def stop_on_interrupt(argv: Sequence[str], console_err: TextIO, server=None) -> Iterator[None]:
    """Run the body with the Ctrl-C handling above; raises RunStopped (one line) after a first Ctrl-C."""
    from arena_pref.tasks import stopping

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def exit_now(signum, frame) -> None:
        stopping.kill_fold_processes()
        if server is not None:
            server.kill()
        with contextlib.suppress(Exception):
            console_err.write("\nstopped at once (second Ctrl-C); a rerun of the same command resumes\n")
            console_err.flush()
        os._exit(EXIT_CODE)

    def first(signum, frame) -> None:
        stopping.request_stop()
        signal.signal(signal.SIGINT, exit_now)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    except KeyboardInterrupt:
        stopping.request_stop()
        signal.signal(signal.SIGINT, exit_now)
        with contextlib.suppress(Exception):  # the fold's progress bar is mid-line: the stop line starts a new one
            console_err.write("\n")
        started = time.monotonic()
        n_folds = stopping.terminate_fold_processes()  # normally already done by the flow; here for any left
        n_mlflow, n_prefect = stopping.mark_stopped()
        LOGGER.warning(
            "stopped by the user: %d MLflow run(s) KILLED, %d Prefect flow run(s) Cancelled, %.1f s to mark them",
            n_mlflow,
            n_prefect,
            time.monotonic() - started,
        )
        raise RunStopped(_stopped_line(argv, n_mlflow, n_prefect, n_folds)) from None
    finally:
        signal.signal(signal.SIGINT, previous)


def _stopped_line(argv: Sequence[str], n_mlflow: int, n_prefect: int, n_left: Optional[int]) -> str:
    left = f", {n_left} fold process(es) ended" if n_left else ""
    return (
        f"stopped (Ctrl-C): {n_mlflow} MLflow run(s) marked KILLED, {n_prefect} Prefect flow run(s) Cancelled{left}; "
        f"checkpoints are kept. Resume with: {resume_command(argv)}"
    )
