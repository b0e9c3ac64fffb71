"""Tasks that open, annotate and close the parent `cv-training` MLflow run, and what the run returns."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import task

from arena_pref.tasks import resources, stopping, tracking
from arena_pref.tasks.evaluation import OOFOutput
from arena_pref.tasks.preparation import TASK_DEFAULTS, PreparedInputs
from arena_pref.tasks.registry import RegistrationOutput
from arena_pref.tasks.retry import retry_on_io
from pref_core.config.fields import result_neutral_fields
from pref_core.config.loading import apply_overrides, load_config, parse_config
from pref_core.config.naming import base_model_label, config_overrides, describe_overrides, run_name, with_recipe
from pref_core.config.schema import ConfigError, RunConfig

LOGGER = logging.getLogger(__name__)


@dataclass
class CVTrainingResult:
    """What `cv-training` returns: its MLflow runs, the OOF evaluation, the registry's decision, the submission."""

    parent_run_id: str
    fold_run_ids: dict[int, str]  # fold -> its MLflow run
    run_key: str  # which computation the run is (pref_core.config.run_key); its folder is runs/<run_key>/
    oof: OOFOutput  # the OOF table's path, its scores and each fold's validation log loss
    registration: RegistrationOutput  # the registered version and whether it became @champion
    submission_path: Optional[str]  # None without data.test_csv
    rows: dict[str, int]  # rows read, kept and rejected per input file (PreparedInputs.counts)
    report_path: Optional[str] = None  # the run's report page (report.html in the run folder)


def final_message(result: CVTrainingResult) -> str:
    """One line for the flow run's state: OOF (calibrated) and prior log loss, then the registry's decision."""
    scores = result.oof.scores
    calibrated = f", calibrated {scores.calibrated_log_loss:.4f}" if scores.calibrated_log_loss is not None else ""
    return (
        f"OOF log loss {scores.log_loss:.4f}{calibrated} (class prior {scores.prior_log_loss:.4f}); "
        f"registry: {result.registration.in_words()}"
    )


@task(name="resolve-config", **TASK_DEFAULTS)
def resolve_config(
    config: Optional[RunConfig],
    config_path: Optional[str],
    overrides: Optional[list[str]],
    fold_execution: Optional[str],
    fields: Optional[dict[str, Any]] = None,
) -> RunConfig:
    """The run's config: a RunConfig given as is, or a YAML path (here, else in the project folder, else a
    shipped recipe: arena_pref.tasks.resources.find_config), then the `key=value` overrides, then `fields` (dotted
    name -> value; None leaves the field alone), then `fold_execution` as cv.execution."""
    if (config is None) == (config_path is None):
        raise ConfigError(["pass exactly one of `config` (a RunConfig) and `config_path` (a YAML file)"])
    extra = [*(overrides or []), *(f"{k}={v}" for k, v in (fields or {}).items() if v is not None)]
    extra += [f"cv.execution={fold_execution}"] if fold_execution else []
    if config_path is not None:
        found = resources.find_config(config_path)
        return with_recipe(load_config(found, extra), found)
    return parse_config(apply_overrides(config.model_dump(mode="json"), extra)) if extra else config


@task(name="open-parent-run", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io, **TASK_DEFAULTS)
def open_parent_run(config: RunConfig, flow_run_name: str = "") -> str:
    """Check the store is reachable (before any training), then create the parent run with the flat config."""
    uri = tracking.resolve_tracking_uri(config)
    tracking.check_tracking_reachable(uri)
    client = tracking.get_client(config)
    experiment_id = tracking.ensure_experiment(client, config.tracking.experiment)
    tags = {
        tracking.TAG_KIND: "cv",
        "arena_pref.prefect_flow_run": flow_run_name,
        tracking.TAG_HOST: socket.gethostname(),
        tracking.TAG_PID: str(os.getpid()),
    }
    commit = tracking.git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    recipe, overrides = recipe_overrides(config)
    tags["mlflow.note.content"] = describe_overrides(recipe, overrides)  # the run page's description
    run = client.create_run(experiment_id, run_name=parent_run_name(config, None, overrides), tags=tags)
    stopping.record_mlflow_run(uri, run.info.run_id)
    close_abandoned_runs(client, experiment_id, run.info.run_id)
    tracking.log_params(client, run.info.run_id, config.flat())
    tracking.log_config(client, run.info.run_id, config)
    LOGGER.info("MLflow parent run %s in experiment %r at %s", run.info.run_id, config.tracking.experiment, uri)
    return run.info.run_id


def close_abandoned_runs(client, experiment_id: str, by_run_id: str) -> list[str]:
    """Close, as FAILED, the parent runs of this host that a process no longer alive left RUNNING (the tracking server
    was lost mid-run, or the process was killed or crashed), with their fold runs left RUNNING likewise; each gets
    a tag saying why and which run found it. Returns the closed parent run ids. Runs of other hosts are left alone:
    whether their process lives cannot be told from here. Best effort: a failure here never stops the new run."""
    host = socket.gethostname()
    closed = []
    try:
        candidates = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{tracking.TAG_KIND}` = 'cv' "
            f"and tags.`{tracking.TAG_HOST}` = '{host}'",
        )
        for parent in candidates:
            if parent.info.run_id == by_run_id or _process_alive(parent.data.tags.get(tracking.TAG_PID)):
                continue
            of_parent = f"tags.`{tracking.TAG_PARENT}` = '{parent.info.run_id}'"
            folds = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and {of_parent}")
            why = (
                f"left RUNNING by process {parent.data.tags.get(tracking.TAG_PID)} on {host}, which had ended when run "
                f"{by_run_id} started (a lost tracking server, a kill or a crash); closed as FAILED by that run"
            )
            for run in [*folds, parent]:
                if run is parent or not _process_alive(run.data.tags.get(tracking.TAG_PID)):
                    client.set_tag(run.info.run_id, tracking.TAG_ABANDONED, why)
                    client.set_terminated(run.info.run_id, "FAILED")
            closed.append(parent.info.run_id)
            LOGGER.info("closed run %s as FAILED: %s", parent.info.run_id, why)
    except Exception:  # noqa: BLE001 (housekeeping of older runs must not cost this one)
        LOGGER.warning("could not close runs left RUNNING by ended processes", exc_info=True)
    return closed


def _process_alive(pid: Optional[str]) -> bool:
    """Whether process `pid` (a tag's text) exists on this host; an unknown pid counts as alive (left alone)."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, PermissionError):
        return True  # no pid recorded, or someone else's process: not ours to judge
    except ProcessLookupError:
        return False
    return True


def recipe_overrides(config: RunConfig) -> tuple[Optional[str], dict[str, Any]]:
    """(recipe path, the fields whose value differs from it); no overrides when the recipe is unknown or no longer
    loads on its own."""
    recipe = config.tracking.recipe
    if not recipe or not Path(recipe).is_file():
        return recipe, {}
    try:
        recipe_flat = load_config(recipe).flat()
    except ConfigError:
        return recipe, {}
    return recipe, config_overrides(config.flat(), recipe_flat)


def parent_run_name(config: RunConfig, run_key: Optional[str], overrides: Optional[dict[str, Any]] = None) -> str:
    """tracking.run_name, else recipe·base·head·overrides·run key (pref_core.config.naming.run_name)."""
    if config.tracking.run_name:
        return config.tracking.run_name
    if overrides is None:
        overrides = recipe_overrides(config)[1]
    return run_name(
        config.tracking.recipe,
        base_model_label(config.model),
        config.model.head,
        overrides,
        run_key,
        neutral=result_neutral_fields(),
    )


@task(name="name-run", **TASK_DEFAULTS)
def name_run(config: RunConfig, parent_run_id: str, run_key: str) -> str:
    """Name the parent MLflow run and this Prefect flow run once the run key is known; returns the name."""
    name = parent_run_name(config, run_key)
    client = tracking.get_client(config)
    client.update_run(parent_run_id, name=name)
    if rename_flow_run(name):
        tracking.set_tags(client, parent_run_id, {"arena_pref.prefect_flow_run": name})
    return name


def rename_flow_run(name: str) -> bool:
    """Give the running Prefect flow run `name` (the UI's runs list and `prefect flow-run ls` show it); False when
    there is none or the API refused."""
    from prefect import get_client
    from prefect.runtime import flow_run

    flow_run_id = flow_run.get_id()
    if not flow_run_id:
        return False
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, name=name)
    except Exception as err:  # noqa: BLE001 (a name is not worth failing a run over)
        LOGGER.warning("could not rename the Prefect flow run to %r: %s", name, err)
        return False
    return True


@task(name="log-inputs", **TASK_DEFAULTS)
def log_inputs(config: RunConfig, parent_run_id: str, prepared: PreparedInputs) -> None:
    """Data and tokenizer identity and row counts, plus the rejected-rows files, on the parent run."""
    client = tracking.get_client(config)
    tracking.set_tags(
        client,
        parent_run_id,
        {
            "arena_pref.run_key": prepared.run_key,
            "arena_pref.train_hash": prepared.train_hash,
            "arena_pref.test_hash": prepared.test_hash or "",
            "arena_pref.base_model": prepared.base_model,
            "arena_pref.train_tokens_key": prepared.train_tokens.key,
            "arena_pref.tokenizer_hash": prepared.tokenizer_hash,
        },
    )
    tracking.log_params(client, parent_run_id, prepared.counts())  # bookkeeping: params, not metric charts
    for path in prepared.rejected_files():
        client.log_artifact(parent_run_id, path, artifact_path="rejected")
    tracking.log_dataset_inputs(client, parent_run_id, dataset_inputs(prepared))


def dataset_inputs(prepared: PreparedInputs) -> list:
    """train, test and extra data as MLflow dataset inputs: content hash, kept rows, source path, columns."""
    import pyarrow.parquet as pq

    inputs = []
    for context, ingested in (("train", prepared.train), ("test", prepared.test), ("extra", prepared.extra)):
        if ingested is None:
            continue
        inputs.append(
            tracking.dataset_input(
                name=f"{context}:{Path(ingested.source).name}",
                context=context,
                source=ingested.source,
                digest=ingested.data_hash,
                n_rows=ingested.n_kept,
                columns=pq.read_schema(ingested.parsed_path).names,
            )
        )
    return inputs


@task(name="close-run", **TASK_DEFAULTS)
def close_run(config: RunConfig, run_id: str, status: str) -> None:
    try:
        tracking.get_client(config).set_terminated(run_id, status)
    except Exception as err:  # noqa: BLE001 (closing must not hide the error that brought us here)
        LOGGER.warning("could not mark MLflow run %s as %s: %s", run_id, status, err)
