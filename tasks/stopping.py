"""Stopping a run on the user's Ctrl-C: what this process started, and ending it cleanly.

A run records here, as it goes, what it created: its Prefect flow runs (cv-training and each fold's), its MLflow runs
(parent and folds) and its live fold processes. When the user stops the run (arena_pref.interruption), the parent
ends every fold process (SIGTERM to its process group, SIGKILL after a grace period), starts no new one and retries
none, then marks each MLflow run still RUNNING as KILLED and each Prefect flow run not yet final as Cancelled.
Checkpoints stay on disk: the rerun of the same command resumes from them.

A fold process leaves the terminal's process group when it starts (`leave_terminal_group`), so a Ctrl-C in the
terminal reaches the parent alone, which stops the folds in order instead of every process dying on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from pref_core.errors import UserError

LOGGER = logging.getLogger(__name__)

# Set by the parent for its fold processes: the child starts a process group of its own (torchrun's processes join it).
FOLD_GROUP_ENV = "ARENA_PREF_FOLD_PROCESS_GROUP"
STOP_MESSAGE = "Stopped by the user (Ctrl-C); a rerun of the same command resumes from the last checkpoint."


class RunStoppedError(UserError):
    """Raised inside the run (fold threads) once the user asked it to stop: nothing new starts, nothing retries."""


@dataclass
class _Registry:
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    tracking_uri: Optional[str] = None
    flow_runs: list[str] = field(default_factory=list)  # Prefect flow run ids, parent first
    mlflow_runs: list[str] = field(default_factory=list)  # MLflow run ids, parent first
    processes: dict[int, object] = field(default_factory=dict)  # pid -> multiprocessing process of a fold


_REGISTRY = _Registry()


def reset() -> None:
    """Forget the previous run (a new run in the same process, e.g. tests)."""
    global _REGISTRY
    _REGISTRY = _Registry()


def record_flow_run(flow_run_id) -> None:
    with _REGISTRY.lock:
        if flow_run_id and str(flow_run_id) not in _REGISTRY.flow_runs:
            _REGISTRY.flow_runs.append(str(flow_run_id))


def record_mlflow_run(tracking_uri: str, run_id: str) -> None:
    with _REGISTRY.lock:
        _REGISTRY.tracking_uri = tracking_uri
        if run_id not in _REGISTRY.mlflow_runs:
            _REGISTRY.mlflow_runs.append(run_id)


def request_stop() -> None:
    _REGISTRY.stop.set()


def stop_requested() -> bool:
    return _REGISTRY.stop.is_set()


def raise_if_stopping(what: str) -> None:
    if stop_requested():
        raise RunStoppedError(f"{what}: not started, the run is stopping")


def add_process(process) -> None:
    with _REGISTRY.lock:
        _REGISTRY.processes[process.pid] = process


def remove_process(process) -> None:
    with _REGISTRY.lock:
        _REGISTRY.processes.pop(process.pid, None)


def n_processes() -> int:
    return len(_REGISTRY.processes)


def leave_terminal_group() -> None:
    """In a fold process started by cv-training: a process group of its own (the parent stops it by that group)."""
    if os.environ.get(FOLD_GROUP_ENV) == "1" and hasattr(os, "setpgid"):
        # Already a session or group leader: the parent's signal still reaches this process by pid.
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)


def _signal_fold(pid: int, signum: int) -> None:
    """`signum` to the fold's process group (its torchrun processes too), or to the process before it made one."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def terminate_fold_processes(grace_s: float = 5.0) -> int:
    """SIGTERM every live fold process (and its group), SIGKILL what is left after `grace_s`; returns how many."""
    with _REGISTRY.lock:
        processes = list(_REGISTRY.processes.values())
    started = time.monotonic()
    for process in processes:
        _signal_fold(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive() or _group_alive(process.pid):
            LOGGER.warning("fold process %d still running %.0f s after SIGTERM: SIGKILL", process.pid, grace_s)
            _signal_fold(process.pid, signal.SIGKILL)
            process.join(2.0)
    if processes:
        LOGGER.warning("%d fold process(es) ended %.1f s after SIGTERM", len(processes), time.monotonic() - started)
    return len(processes)


def kill_fold_processes() -> None:
    """SIGKILL every live fold process group now (a second Ctrl-C)."""
    for pid in list(_REGISTRY.processes):
        _signal_fold(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def mark_stopped() -> tuple[int, int]:
    """MLflow runs still RUNNING -> KILLED, Prefect flow runs not final -> Cancelled. Returns (mlflow, prefect) counts.

    Best effort: a store that fails here is logged, never raised (the user asked to stop, not for a traceback)."""
    n_mlflow = n_prefect = 0
    if _REGISTRY.tracking_uri and _REGISTRY.mlflow_runs:
        try:
            from mlflow import MlflowClient

            client = MlflowClient(_REGISTRY.tracking_uri)
            for run_id in _REGISTRY.mlflow_runs:
                if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
                    client.set_terminated(run_id, "KILLED")
                    n_mlflow += 1
        except Exception:  # noqa: BLE001
            LOGGER.warning("could not mark the MLflow runs of the stopped run as KILLED", exc_info=True)
    if _REGISTRY.flow_runs:
        try:
            from prefect.client.orchestration import get_client
            from prefect.states import Cancelled

            with get_client(sync_client=True) as client:
                for flow_run_id in _REGISTRY.flow_runs:
                    state = client.read_flow_run(flow_run_id).state
                    # Crashed is how Prefect's engine records the interrupt itself; Failed or Completed stay.
                    if state is None or not state.is_final() or state.is_crashed():
                        client.set_flow_run_state(flow_run_id, Cancelled(message=STOP_MESSAGE), force=True)
                        n_prefect += 1
        except Exception:  # noqa: BLE001
            LOGGER.warning("could not mark the Prefect flow runs of the stopped run as Cancelled", exc_info=True)
    return n_mlflow, n_prefect
