"""Process environment defaults, defined once, in named groups.

Each group is a read-only mapping of variable -> value. `apply_defaults` sets the missing ones in this
process (before prefect, mlflow or transformers are imported: they read several at import time);
`child_env` returns an environment for a subprocess. Both fill only what is unset: a value the user
exported always wins.

Hub access (HF_HUB_OFFLINE, HF_TOKEN, HF_HOME, HF_ENDPOINT) is the user's choice: no group here sets it, so
`train`, `predict`, the stack and its workers reach the Hub on a user's GPU box. The demo needs no Hub (its
model is built locally); the tests (tests/conftest.py), the Makefile's demo/test/smoke/bench targets and the
benchmarks set HF_HUB_OFFLINE themselves.

This module imports nothing outside the standard library: `bench/gpu_check.py` reads it under the GPU
machine's bare python3, where the project's dependencies may be missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional

# No usage reports from Prefect (client and server) or any library that honours DO_NOT_TRACK.
TELEMETRY = MappingProxyType(
    {
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
)

# Library behaviour the pipeline relies on.
LIBRARIES = MappingProxyType(
    {
        # The Trainer's own MLflow callback would open stray runs beside ours (we log through explicit run ids).
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",
        # tokenizers warns, and can deadlock, when a process forks after it used its thread pool.
        "TOKENIZERS_PARALLELISM": "false",
        # `mlflow server` otherwise starts a job runner of about 15 processes (~3 GB).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
)

# Prefect's temporary server gets 20 s to start by default; a busy machine needs more.
SLOW_START = MappingProxyType(
    {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
)

# Library progress bars and advice: they clutter log files and workers' logs (the console has its own bars).
NO_PROGRESS_BARS = MappingProxyType(
    {
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
)

# MLflow's HTTP client retries each call 7 times with a backoff factor of 2 and waits up to 120 s for an answer:
# about 4 minutes per call when the tracking server is gone, so a run whose server died crawled on for many
# minutes. Bounded here: 2 retries 1-2 s apart (about 3-5 s per call when nothing answers), 30 s per request.
# A server that rate-limits for a minute or more (a hosted MLflow) may want MLflow's own defaults back: export
# these variables with other values (a value the user exported always wins).
TRACKING_RETRIES = MappingProxyType(
    {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
)

# What every `arena-pref` command, the stack's servers and workers get.
PRODUCT = (TELEMETRY, LIBRARIES, SLOW_START, TRACKING_RETRIES)


def local_prefect(project_root: Path, base: Optional[Mapping[str, str]] = None) -> Mapping[str, str]:
    """Prefect's local history with the project: PREFECT_HOME = <project folder>/.prefect, beside the MLflow
    store, so two projects on one machine never share run history in ~/.prefect/prefect.db (the temporary
    server's database lives in PREFECT_HOME). Nothing when the user chose a Prefect server (PREFECT_API_URL) or
    a home (PREFECT_HOME). The user's profiles (a Prefect Cloud login, a `prefect config set`) stay in use:
    PREFECT_PROFILES_PATH keeps pointing at ~/.prefect/profiles.toml when that file exists."""
    env = os.environ if base is None else base
    if env.get("PREFECT_API_URL") or env.get("PREFECT_HOME"):
        return MappingProxyType({})
    group = {"PREFECT_HOME": str(Path(project_root) / ".prefect")}
    user_profiles = Path("~/.prefect/profiles.toml").expanduser()
    if user_profiles.is_file():
        group["PREFECT_PROFILES_PATH"] = str(user_profiles)
    return MappingProxyType(group)


def _merged(groups: tuple[Mapping[str, str], ...]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for group in groups:
        if not isinstance(group, Mapping):
            raise TypeError(f"environment group {group!r} is not a mapping; pass e.g. environment.TELEMETRY")
        merged.update(group)
    return merged


def apply_defaults(*groups: Mapping[str, str]) -> dict[str, str]:
    """Set each variable of `groups` that this process does not have yet; returns the ones it set."""
    applied = {}
    for key, value in _merged(groups).items():
        if key not in os.environ:
            os.environ[key] = applied[key] = value
    return applied


def child_env(*groups: Mapping[str, str], base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A subprocess environment: `base` (default: this process's) plus each variable of `groups` it lacks."""
    env = dict(os.environ if base is None else base)
    for key, value in _merged(groups).items():
        env.setdefault(key, value)
    return env
