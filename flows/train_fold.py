"""The `train-fold` flow: one fold of one CV run, deployable on its own to a GPU worker."""

# No `from __future__ import annotations` here: cv-training's subprocess folds send this flow to the new
# process by value (cloudpickle), and the pydantic model Prefect builds from its signature needs the
# annotations as classes, not as names to look up in a module that was not pickled.
from prefect import flow

from arena_pref.flows.preparation import prepare_inputs
from arena_pref.tasks.stopping import leave_terminal_group
from arena_pref.tasks.training import fit_fold
from pref_core.config.schema import RunConfig
from pref_core.train.result import FoldResult


@flow(name="train-fold", log_prints=True)
def train_fold(config: RunConfig, fold: int, mlflow_run_id: str, train_hash: str, force: bool = False) -> FoldResult:
    """Prepare inputs (cache hits where they exist), then train fold `fold`, logging into `mlflow_run_id`."""
    leave_terminal_group()  # started by cv-training: its Ctrl-C stops this process, not the terminal's
    prepared = prepare_inputs(config)
    if prepared.train_hash != train_hash:
        raise ValueError(
            f"data.train_csv on this worker ({config.data.train_csv}) has hash {prepared.train_hash[:12]}, "
            f"but the CV run was started on {train_hash[:12]}: fold workers must see the same file"
        )
    return fit_fold(config, fold, mlflow_run_id, prepared, force=force)
