"""The flow's own preflight: what a deployment run (no CLI in front of it) must check before it opens an MLflow
run, so missing or bad data ends the flow run with the reason as its state message and leaves no run behind."""

from __future__ import annotations

from prefect import task

from arena_pref.tasks import tracking
from arena_pref.tasks.preparation import TASK_DEFAULTS, ingest
from pref_core.config.loading import require_train_csv
from pref_core.config.schema import RunConfig
from pref_core.errors import UserError

# What a preflight failure may be: the user's to fix (a bad or missing file, an unreachable store).
PREFLIGHT_ERRORS = (UserError, FileNotFoundError, PermissionError)


@task(name="preflight", **TASK_DEFAULTS)
def check_inputs(config: RunConfig) -> None:
    """data.train_csv set and readable, the test file too when given (validated and cached: the flow's ingest is
    then a cache hit), the tracking store reachable; raises one of PREFLIGHT_ERRORS saying what is wrong."""
    require_train_csv(config)
    for kind, path in (("train", config.data.train_csv), ("test", config.data.test_csv)):
        if path is None:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"data.{kind}_csv: no file {path}")
        ingest.fn(config, kind)
    tracking.check_tracking_reachable(tracking.resolve_tracking_uri(config))
