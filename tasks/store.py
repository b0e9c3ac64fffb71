"""Which MLflow tracking store a command uses, answered without importing mlflow (3-4 s here).

`$MLFLOW_TRACKING_URI`, else the local server `arena-pref ui` started (its server.json), else the SQLite file
`mlflow/mlflow.db` in the project folder (arena_pref.tasks.resources). tasks/tracking.py re-exports these for the
tasks; the CLI reads them here, before anything heavy is imported. Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from arena_pref.tasks import resources
from pref_core.errors import UserError


class TrackingUnavailableError(UserError, RuntimeError):
    """The MLflow tracking store cannot be reached or used; raised before any work starts."""


class TrackingLostError(TrackingUnavailableError):
    """The MLflow tracking server stopped answering while a run was going on: the run stops (its checkpoints and
    adapters stay on disk) instead of crawling through every logging call's retries."""


# The local store (`arena-pref ui` serves it; the embedded default when no server runs) is
# resources.store_dir(): mlflow/ in the project folder, never site-packages.
def local_store_uri() -> str:
    return f"sqlite:///{(resources.store_dir() / 'mlflow.db').as_posix()}"


def local_artifact_root() -> Path:
    return resources.store_dir() / "artifacts"


def running_local_server_url() -> Optional[str]:
    """URL of the server started by `arena-pref ui`/`mlflow/launch.sh` when it is alive, else None."""
    try:
        state = json.loads((resources.store_dir() / "server.json").read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(state["url"])


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI > the running local server > the local SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or running_local_server_url() or local_store_uri()
