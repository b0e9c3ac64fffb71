"""How the parent runs a fold away from itself: `train-fold` in a fresh process per fold (a device slot each,
cv.execution=subprocess) or as a run of the train-fold deployment on a GPU worker (cv.execution=deployment).

A process killed by a signal is retried and resumes from its checkpoint; after all folds ended, one error names
every failed fold.
"""

from __future__ import annotations

import time
from typing import Optional

from prefect import Flow, get_run_logger, task
from prefect.client.orchestration import get_client as get_prefect_client
from prefect.context import TagsContext, TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow_in_subprocess
from prefect.settings import get_current_settings
from prefect.states import Failed

from arena_pref.tasks import stopping, tracking
from arena_pref.tasks.preparation import TASK_DEFAULTS
from arena_pref.tasks.training import FoldFailedError, recorded_fold_error
from pref_core.config.schema import RunConfig
from pref_core.progress import console_child_env
from pref_core.train.devices import DeviceSlots, slot_environment


class FoldProcessKilledError(FoldFailedError):
    """A fold's process was ended by a signal (OOM killer, preemption, SIGKILL): retried, it resumes."""


def _fold_flow_parameters(config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool) -> dict:
    return {
        "config": config.model_dump(mode="json"),
        "fold": fold,
        "mlflow_run_id": mlflow_run_id,
        "train_hash": train_hash,
        "force": force,
    }


def _prefect_child_env() -> dict[str, str]:
    """What a child process needs to talk to the same Prefect API as this one.

    Without a configured server Prefect runs a temporary one for this process; the child must use it too
    rather than start a second one. The client's public `api_url` is that server's address.
    """
    if get_current_settings().api.url:
        return {}
    with get_prefect_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url).rstrip("/")}


def _retry_killed_fold(task, task_run, state) -> bool:
    """Retry a fold whose process was killed (OOM killer, preemption, SIGKILL): it resumes from its checkpoint."""
    if stopping.stop_requested():  # the user's Ctrl-C killed it: the rerun resumes, not a retry now
        return False
    try:
        state.result()
    except FoldProcessKilledError:
        return True
    except Exception:  # noqa: BLE001 (any other failure is final: retrying cannot fix it)
        return False
    return False


@task(
    name="train-fold-process", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_killed_fold, **TASK_DEFAULTS
)
def run_fold_in_subprocess(
    fold_flow: Flow,
    config: RunConfig,
    fold: int,
    mlflow_run_id: str,
    train_hash: str,
    force: bool = False,
    slots: Optional[DeviceSlots] = None,
) -> str:
    """Run `fold_flow` (the `train-fold` flow, given by the calling flow) for one fold in a fresh process:
    its CUDA memory is freed when it exits. The fold's flow run is a child of this task run in the UI.

    With `slots` (cv.max_parallel), the process gets a free device slot of its own for as long as it runs.
    """
    stopping.raise_if_stopping(f"fold {fold}")
    if slots is None:
        return _run_fold_process(fold_flow, config, fold, mlflow_run_id, train_hash, force, slot=None)
    with slots.take() as slot:
        stopping.raise_if_stopping(f"fold {fold}")
        return _run_fold_process(fold_flow, config, fold, mlflow_run_id, train_hash, force, slot=slot)


def _run_fold_process(
    fold_flow: Flow, config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool, slot: Optional[str]
) -> str:
    logger = get_run_logger()
    # A fold started after the tracking server went away would fail in its first MLflow call: stop here instead.
    tracking.raise_if_server_lost(tracking.resolve_tracking_uri(config), f"the run, before fold {fold} started")
    task_run = TaskRunContext.get().task_run
    attempt = task_run.run_count or 1
    name = f"fold-{fold}" if attempt <= 1 else f"fold-{fold}-attempt-{attempt}"
    parameters = _fold_flow_parameters(config, fold, mlflow_run_id, train_hash, force and attempt <= 1)
    with get_prefect_client(sync_client=True) as client:
        _wait_for_task_run_record(client, task_run.id)
        flow_run = client.create_flow_run(fold_flow, parameters=parameters, parent_task_run_id=task_run.id, name=name)
    stopping.record_flow_run(flow_run.id)
    env = {
        stopping.FOLD_GROUP_ENV: "1",  # its own process group: the terminal's Ctrl-C reaches the parent alone
        **_prefect_child_env(),
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",  # the Trainer must never open MLflow runs of its own
        **console_child_env(),  # the progress bar's way to the console
        **(slot_environment(slot) if slot is not None else {}),
    }
    if slot is not None:
        tracking.set_tags(tracking.get_client(config), mlflow_run_id, {tracking.TAG_DEVICE: slot})
    logger.info(
        "fold %d: starting process for flow run %s (%s)%s",
        fold,
        flow_run.name,
        flow_run.id,
        f" on device {slot}" if slot is not None else "",
    )
    # The parent's context stays here: the fold's run is linked through parent_task_run_id, and a
    # serialized parent flow context would carry this process's settings (its temporary API server).
    process = run_flow_in_subprocess(
        fold_flow,
        flow_run=flow_run,
        parameters=parameters,
        env=env,
        context={"tags_context": TagsContext.get().serialize()},
    )
    stopping.add_process(process)
    if stopping.stop_requested():  # the stop came while it started: it was not among those stopped
        stopping.terminate_fold_processes()
    try:
        process.join()
    finally:
        stopping.remove_process(process)
    if stopping.stop_requested():  # ended by the user's Ctrl-C: the parent marks its runs, the rerun resumes
        raise stopping.RunStoppedError(f"fold {fold}: stopped by the user")
    with get_prefect_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    # The process exits 0 when the flow failed inside it: its run's state is what says how it went.
    if process.exitcode != 0 or state is None or not state.is_completed():
        _raise_fold_process_failed(config, fold, flow_run, mlflow_run_id, process.exitcode, state)
    return str(flow_run.id)


def _wait_for_task_run_record(client, task_run_id, timeout_s: float = 120.0) -> None:
    """Wait until the API has this task run's record. Task runs reach the server as events, written a moment
    later; a flow run created with the task run as its parent before then is refused (409, foreign key)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.read_task_run(task_run_id)
            return
        except ObjectNotFound:
            if time.monotonic() > deadline:
                raise FoldFailedError(
                    f"task run {task_run_id} was not recorded by the Prefect API within {timeout_s:.0f} s; "
                    "check that the Prefect server is healthy, then rerun (finished folds are reused)"
                ) from None
            time.sleep(0.25)


def _raise_fold_process_failed(
    config: RunConfig, fold: int, flow_run, mlflow_run_id: str, exitcode: int, state
) -> None:
    """Mark the fold's flow run failed if its process could not, and raise the error that says why:
    FoldProcessKilledError (retried: it resumes) for a signal, FoldFailedError otherwise."""
    if exitcode < 0:
        how = f"killed by signal {-exitcode}"
    elif exitcode > 0:
        how = f"exit code {exitcode}"
    else:
        how = f"{state.name if state else 'no state'}: {(state.message if state else '') or 'no message'}"
    if state is None or not state.is_final():
        with get_prefect_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Failed(message=how), force=True)
    recorded = recorded_fold_error(config, mlflow_run_id) if exitcode >= 0 else None
    if recorded:  # e.g. CUDA out of memory: the fold's own line says what to change
        raise FoldFailedError(f"{recorded}; flow run '{flow_run.name}' ({flow_run.id}), MLflow run {mlflow_run_id}")
    error = FoldProcessKilledError if exitcode < 0 else FoldFailedError
    raise error(
        f"fold {fold} failed ({how}) in flow run '{flow_run.name}' ({flow_run.id}); "
        f"MLflow run {mlflow_run_id}. See that flow run's logs; rerunning resumes from its last checkpoint."
    )


@task(name="train-fold-deployment", **TASK_DEFAULTS)
def run_fold_deployment(config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool = False) -> str:
    """Run one fold through the `train-fold` deployment (a GPU worker) and wait for it."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    logger.info("fold %d: submitting to deployment %s", fold, config.cv.fold_deployment)
    flow_run = run_deployment(
        config.cv.fold_deployment,
        parameters=_fold_flow_parameters(config, fold, mlflow_run_id, train_hash, force),
        flow_run_name=f"fold-{fold}",
        timeout=None,
        poll_interval=2,
    )
    if flow_run.state is None or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        message = (flow_run.state.message if flow_run.state else "") or ""
        raise FoldFailedError(
            f"fold {fold} failed in flow run '{flow_run.name}' ({flow_run.id}) of deployment "
            f"{config.cv.fold_deployment}: {state}. {message} MLflow run {mlflow_run_id}."
        )
    return str(flow_run.id)


def raise_failed_folds(futures) -> None:
    """After all fold runs ended: one error naming every failed fold (not just the first); one fold's failure is its
    own line (it names the fold), several are a short report of one line each."""
    errors = []
    for future in futures:
        try:
            future.result()
        except Exception as err:  # noqa: BLE001 (every fold's failure is collected, then raised together)
            errors.append(str(err))
    if len(errors) == 1:
        raise FoldFailedError(errors[0])
    if errors:
        raise FoldFailedError(f"{len(errors)} fold(s) failed:\n" + "\n".join(errors))
