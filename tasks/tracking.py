"""MLflow plumbing shared by the tasks: where the store is, runs, and a Trainer callback.

Everything goes through an explicit `MlflowClient(tracking_uri)` and explicit
run ids (never the fluent "active run"): Prefect runs tasks in worker threads
and fold flows in other processes, where a thread-local active run would be
the wrong one or none.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Optional

from mlflow.entities import Metric, Param, RunTag
from transformers import TrainerCallback

from arena_pref.tasks import resources
from arena_pref.tasks.store import (  # noqa: F401 (re-exported: the tasks' names for the store)
    TrackingLostError,
    TrackingUnavailableError,
    default_tracking_uri,
    local_artifact_root,
    local_store_uri,
    running_local_server_url,
)
from mlflow import MlflowClient
from pref_core.config.schema import RunConfig
from pref_core.evaluate.oof import SCORE_METRICS

LOGGER = logging.getLogger(__name__)

TAG_FOLD = "arena_pref.fold"
TAG_KIND = "arena_pref.kind"
TAG_PARENT = "mlflow.parentRunId"
TAG_DEVICE = "arena_pref.device"  # the device slot a fold process ran on (cv.max_parallel)
TAG_HOST = "arena_pref.host"  # where the run's process ran ...
TAG_PID = "arena_pref.pid"  # ... and its id: a run left RUNNING by a process gone is closed (runs.close_abandoned_runs)
TAG_ABANDONED = "arena_pref.abandoned"  # why a run was closed FAILED by a later run

# MLflow 3's UI opens an experiment on its GenAI pages unless the link asks for the model-training view (it reads
# the query, then the browser's last choice; no server-side default).
TRAINING_VIEW = "workflowType=machine_learning"
# A saved view of the runs table, kept as an experiment tag (the UI's "Views" menu lists it): parent runs sorted by
# OOF log loss, the scores as columns. MLflow 3.17's table shows no metric column by default and takes no column
# choice from a link, only the key of a saved view (`viewStateShareKey`), so every experiment we log to gets it.
SCORE_VIEW_KEY = "arena-pref-scores"
SCORE_VIEW_TAG = f"mlflow.sharedViewState.{SCORE_VIEW_KEY}"
# MLflow params are capped in length; longer values (lists of modules) are cut with a marker.
_PARAM_MAX = 500


def resolve_tracking_uri(config: RunConfig) -> str:
    """`tracking.uri` when set, else the default store."""
    return config.tracking.uri or default_tracking_uri()


def server_problem(uri: str, timeout_s: float = 5.0) -> Optional[str]:
    """Why the tracking server at `uri` does not answer its /health (None: it answers, or `uri` is no server)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:  # noqa: S310
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def lost_server_problem(uri: str, attempts: int = 3, pause_s: float = 1.0) -> Optional[str]:
    """Why the tracking server at `uri` is gone when it does not answer `attempts` tries `pause_s` apart (a restart's
    blip is not a lost server); None while it answers (or `uri` is no server)."""
    problem = server_problem(uri)
    for _ in range(attempts - 1):
        if problem is None:
            return None
        time.sleep(pause_s)
        problem = server_problem(uri)
    return problem


def lost_server_error(
    uri: str,
    problem: str,
    during: str,
    kept_in: str = "on disk",
    resume: Optional[str] = None,
    log_path: Optional[Path] = None,
) -> TrackingLostError:
    """The one line for a tracking server that stopped answering during a run: what is kept where (`kept_in`), how
    to go on (`resume`: the command to rerun) and the run's log, when the caller knows them."""
    line = (
        f"MLflow tracking server {uri} stopped answering during {during} ({problem}); checkpoints and adapters are "
        f"kept {kept_in}. Start the server again (same address and store), then rerun the same command: finished "
        "folds are reused, the others resume from their last checkpoint"
    )
    line += f". Resume with: {resume}" if resume else ""
    line += f" (full log: {log_path})" if log_path else ""
    return TrackingLostError(line)


def log_dataset_inputs(client: MlflowClient, run_id: str, datasets: list, attempts: int = 3) -> None:
    """client.log_inputs, tried again when another run logged the same dataset at the same moment: MLflow's SQL store
    looks the dataset up, then inserts it, so two runs on the same data can both insert and one gets the unique
    constraint; its retry finds the dataset and links it."""
    for attempt in range(1, attempts + 1):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except Exception as err:  # noqa: BLE001 (only the store's unique-constraint race is retried)
            if "unique constraint" not in str(err).lower() or attempt == attempts:
                raise
            LOGGER.info("dataset inputs of run %s collided with another run's; trying again", run_id)
            time.sleep(0.2 * attempt)


def raise_if_server_lost(uri: str, during: str) -> None:
    """Raise TrackingLostError when the tracking server at `uri` stopped answering (`during`: what was going on)."""
    problem = lost_server_problem(uri)
    if problem is not None:
        raise lost_server_error(uri, problem, during)


def check_tracking_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, when the store cannot be used (before any GPU hour is spent)."""
    if uri.startswith(("http://", "https://")):
        problem = server_problem(uri, timeout_s)
        if problem is None:
            return
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} is not reachable ({problem}). Start it with `arena-pref ui` "
            "(or mlflow/launch.sh), or point tracking.uri / MLFLOW_TRACKING_URI at a running server."
        )
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingUnavailableError(f"MLflow store {uri}: cannot create {folder} ({err})") from None
        if not os.access(folder, os.W_OK):
            raise TrackingUnavailableError(f"MLflow store {uri}: folder {folder} is not writable")
        create_sqlite_store(uri)


def create_sqlite_store(uri: str) -> None:
    """Create (or migrate) a local SQLite store once, whatever number of runs start at the same moment.

    MLflow creates its tables the first time a client touches a new file; two processes doing it at once collide
    inside its schema set-up. An exclusive lock on `<store>.lock` makes one create it while the others wait, then find
    it ready. Cheap once the store exists (the lock is held for one query)."""
    import fcntl

    path = Path(uri.removeprefix("sqlite:///"))
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)  # the first touch creates the tables
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def get_client(config: RunConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=resolve_tracking_uri(config))


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Experiment id, creating it with an explicit artifact root for local stores (never an implicit ./mlruns); the
    experiment has the runs-table view of the scores (SCORE_VIEW_TAG)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = _create_experiment(client, name)
        experiment = client.get_experiment(experiment_id)
    if SCORE_VIEW_TAG not in experiment.tags:
        try:
            client.set_experiment_tag(experiment.experiment_id, SCORE_VIEW_TAG, score_view_state())
        except Exception as err:  # noqa: BLE001 (a view of the table is no reason to stop a run)
            LOGGER.warning("could not save the runs-table view on experiment %s: %s", name, err)
    return experiment.experiment_id


def score_view_state(now_ms: Optional[int] = None) -> str:
    """The saved view as the MLflow UI's own "Save view" writes it: JSON whose `state` is a JSON string.

    Parent runs only (fold runs carry no OOF metric), sorted by OOF log loss ascending, the scores first."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    metrics = [f"metrics.`{name}`" for name in SCORE_METRICS]
    state = {
        "searchFilter": f"metrics.{SCORE_METRICS[0]} > 0",
        "orderByKey": metrics[0],
        "orderByAsc": True,
        "selectedColumns": ["attributes.`Dataset`", "attributes.`Source`", "attributes.`Models`", *metrics],
        "columnOrder": metrics,
    }
    view = {"name": "arena-pref: runs by OOF log loss", "createdAt": now_ms, "updatedAt": now_ms}
    return json.dumps({**view, "state": json.dumps(state)})


def run_url(server_url: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training view of a tracking server's UI."""
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def runs_table_url(server_url: str, experiment_id: str) -> str:
    """The experiment's runs table with the scores view (SCORE_VIEW_KEY): the `/runs` page, and no sort or filter in
    the query, else the UI ignores the saved view."""
    query = f"{TRAINING_VIEW}&viewStateShareKey={SCORE_VIEW_KEY}"
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def _create_experiment(client: MlflowClient, name: str) -> str:
    artifact_location = None
    if client.tracking_uri.startswith("sqlite:///"):
        store = Path(client.tracking_uri.removeprefix("sqlite:///")).parent
        artifact_location = (store / "artifacts").resolve().as_uri()
    # The MLflow 3 UI opens GenAI pages for experiments of unknown kind; ours is model training.
    tags = {"mlflow.experimentKind": "custom_model_development", SCORE_VIEW_TAG: score_view_state()}
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    except Exception:  # a concurrent run created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_commit() -> Optional[str]:
    """The commit of the checkout the code runs from; None for an installed package (its version is the record)."""
    checkout = resources.checkout_root()
    if checkout is None:
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = []
    for key, value in params.items():
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        if len(text) > _PARAM_MAX:
            text = text[: _PARAM_MAX - 3] + "..."
        items.append(Param(key, text))
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, step) for key, value in metrics.items() if value is not None]
    if items:
        client.log_batch(run_id, metrics=items)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


# Trainer log keys -> the metric names users see in MLflow.
_METRIC_NAMES = {"loss": "train_loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}


class MlflowFoldCallback(TrainerCallback):
    """Streams the Trainer's logs of one fold into its MLflow child run.

    Step metrics are buffered and sent in batches (at each evaluation, every
    `flush_every` entries and at the end): one store write per log line costs
    seconds per run on SQLite. A tracking hiccup mid-training is logged and
    skipped, never allowed to kill hours of GPU work: the adapter is on disk
    regardless, and the final metrics are logged again at the end.

    A tracking server that stopped answering is no hiccup: at most every
    `watch_every_s` seconds (and after a failed flush) the callback asks the
    server's /health, and when nothing answers it raises TrackingLostError, which
    ends the fold; its checkpoints stay on disk and the rerun resumes from them.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 50, watch_every_s: float = 5.0):
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self.watch_every_s = watch_every_s
        self.failures = 0
        self._pending: list[Metric] = []
        self._watched_at = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if time.monotonic() - self._watched_at >= self.watch_every_s:
            self._watch(state.global_step)
        now = int(time.time() * 1000)
        for key, value in logs.items():
            if not isinstance(value, (int, float)):
                continue
            name = _METRIC_NAMES.get(key, key if key.startswith("val_") else None)
            if name is not None:
                self._pending.append(Metric(name, float(value), now, int(state.global_step)))
        if len(self._pending) >= self.flush_every or any(k.startswith("val_") for k in logs):
            self.flush(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.flush(state.global_step)

    def flush(self, step: int) -> None:
        if not self._pending:
            return
        try:
            for start in range(0, len(self._pending), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=self._pending[start : start + 1000])
            self._pending = []
        except Exception as err:  # noqa: BLE001 (a tracking hiccup never kills hours of training)
            self.failures += 1
            self._watch(step)  # ... but a server that is gone ends the fold
            LOGGER.warning("MLflow logging failed at step %s (%s); training goes on", step, err)

    def _watch(self, step: int) -> None:
        self._watched_at = time.monotonic()
        raise_if_server_lost(self.client.tracking_uri, f"training (MLflow run {self.run_id}, step {step})")


def log_config(client: MlflowClient, run_id: str, config: RunConfig) -> None:
    """The resolved config as `config.yaml` (the run's recipe, rerunnable with `--config`)."""
    import yaml

    client.log_text(run_id, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")


def dataset_input(name: str, context: str, source: str, digest: str, n_rows: int, columns: list[str]):
    """An MLflow dataset input (the runs table's Dataset column): content hash as digest, row count, source path."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=name,
        digest=digest[:32],
        source_type="local",
        source=json.dumps({"uri": Path(source).resolve().as_uri() if "://" not in source else source}),
        schema=json.dumps({"mlflow_colspec": [{"type": "string", "name": c} for c in columns]}),
        profile=json.dumps({"num_rows": int(n_rows)}),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value=context)])


class SystemMetrics:
    """MLflow's system metrics monitor (CPU, memory, disk, network; GPU with nvidia-ml-py) for an explicit run id.

    `interval_s` <= 0 turns it off. A monitor that fails to start is logged and skipped: system
    metrics are a diagnostic, never a reason to lose a fold.
    """

    def __init__(self, client: MlflowClient, run_id: str, interval_s: float, resume: bool = False):
        self.client, self.run_id, self.interval_s, self.resume = client, run_id, interval_s, resume
        self.monitor = None

    def __enter__(self):
        if self.interval_s > 0:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self.monitor = SystemMetricsMonitor(
                    self.run_id,
                    sampling_interval=self.interval_s,
                    resume_logging=self.resume,
                    tracking_uri=self.client.tracking_uri,
                )
                self.monitor.start()
            except Exception as err:  # noqa: BLE001 (a diagnostic, never a reason to lose a fold)
                LOGGER.warning("system metrics are off for run %s: %s", self.run_id, err)
                self.monitor = None
        return self

    def __exit__(self, *exc):
        if self.monitor is not None:
            self.monitor.finish()
        return False
