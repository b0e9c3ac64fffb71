"""Quick, read-only questions to the tracking store before any real work, without importing mlflow.

`import mlflow` alone takes 3-4 s on a 2-core machine, so a registry look-up that must fail in under 2 s cannot use
it. Before `predict`, `export`, `models`, `promote` and `train` do their work, this module answers:

- is the tracking URI's scheme one MLflow knows (`check_scheme`);
- can the store be reached (`check_reachable`): an http(s) server's `/health` with a short timeout and bounded
  retries (3 tries, about 8 s at most when nothing answers, 1.5 s when the port is closed); a SQLite file's folder;
- does a registered model, version or alias exist (`check_model_uri`, `check_registered_model`, `check_version`).

What it depends on, honestly: for `sqlite:` stores it reads MLflow's tables (`registered_models`, `model_versions`,
`registered_model_aliases`) read-only, so a future MLflow that renames them makes the probe answer "cannot tell"
(never a false error: the real work then asks MLflow itself); for `http(s)` stores it calls the REST API
(`/api/2.0/mlflow/registered-models/get`, `.../model-versions/get`, `.../registered-models/alias`) with the
MLFLOW_TRACKING_TOKEN / USERNAME / PASSWORD credentials; other stores (postgresql, mysql, databricks, file) are not
probed for models: their look-up errors come from MLflow, still in one line. The probe only checks; the work that
follows goes through MLflow as before.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from arena_pref.tasks.store import TrackingUnavailableError
from pref_core.errors import UserError

# Tracking-store schemes MLflow registers itself (mlflow/tracking/_tracking_service/utils.py); database URIs may
# name a driver (postgresql+psycopg2). Plugins add theirs through the `mlflow.tracking_store` entry points.
BUILTIN_SCHEMES = ("", "file", "http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql")
ATTEMPTS = 3  # tries of an http(s) store before it is called unreachable
TIMEOUT_S = 2.0  # per try
PAUSES_S = (0.5, 1.0)  # between tries
DELETED_STAGE = "Deleted_Internal"  # MLflow's mark on a deleted model version that is still in the table


class RegistryLookupError(UserError, LookupError):
    """A registered model, version or alias that the store does not have, or a model URI of the wrong shape."""


@dataclass(frozen=True)
class ModelRef:
    """What a `models:/` URI names: a name and a version, an alias, `latest` or a stage (None: not checked)."""

    name: str
    version: Optional[str] = None
    alias: Optional[str] = None


def scheme_of(uri: str) -> str:
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme  # C:\... is a Windows path, not a scheme


def check_scheme(uri: str) -> None:
    """One line for a tracking URI whose scheme no tracking store serves (a typo such as `htp://` or `foo://`)."""
    scheme = scheme_of(uri)
    if scheme.split("+")[0] in BUILTIN_SCHEMES:
        return
    from importlib.metadata import entry_points

    if scheme in {entry.name for entry in entry_points(group="mlflow.tracking_store")}:
        return
    raise TrackingUnavailableError(
        f"tracking URI {uri!r}: unknown scheme {scheme + '://'!r}; use http://HOST:PORT (a tracking server, e.g. "
        "the one `arena-pref ui` starts), sqlite:///PATH/mlflow.db, a postgresql:// or mysql:// database, or a "
        "folder; set it with --tracking-uri, tracking.uri or MLFLOW_TRACKING_URI"
    )


def sqlite_path(uri: str) -> Path:
    """The database file of a `sqlite:///` URI (`sqlite:////abs/path` or `sqlite:///relative/path`)."""
    return Path(urllib.parse.unquote(uri.split("://", 1)[1][1:].split("?", 1)[0]))


def check_reachable(uri: str, writable: bool = False) -> None:
    """Fail in one line, naming the URI and how to start or change it, when the store cannot be used: an http(s)
    server that does not answer /health (bounded retries), a SQLite file whose folder cannot be created or written
    (`writable`: the command will write to it)."""
    check_scheme(uri)
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        status, body = _get(uri.rstrip("/") + "/health")
        if status == 200:
            return
        problem = body if status is None else f"HTTP {status}"
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} is not reachable ({problem}); start it with `arena-pref ui` (or "
            "`arena-pref stack up`), or point --tracking-uri / tracking.uri / MLFLOW_TRACKING_URI at a running server"
        )
    if scheme == "sqlite" and writable:
        folder = sqlite_path(uri).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingUnavailableError(
                f"MLflow store {uri}: cannot create {folder} ({err.strerror or err}); choose another store with "
                "tracking.uri / MLFLOW_TRACKING_URI"
            ) from None
        if not os.access(folder, os.W_OK):
            raise TrackingUnavailableError(
                f"MLflow store {uri}: folder {folder} is not writable; choose another store with tracking.uri / "
                "MLFLOW_TRACKING_URI"
            )


def parse_model_uri(model_uri: str) -> Optional[ModelRef]:
    """The registered model a `models:/` URI names; None for `runs:/` URIs (not a registry look-up). Any other
    shape is one line saying which shapes work."""
    shapes = "models:/NAME@ALIAS (e.g. models:/arena-pref@champion) or models:/NAME/VERSION"
    if model_uri.startswith("runs:/"):
        return None
    if not model_uri.startswith("models:/"):
        raise RegistryLookupError(f"model URI {model_uri!r}: not a registered model; use {shapes}")
    path = model_uri[len("models:/") :].strip("/")
    if "@" in path:
        name, _, alias = path.partition("@")
        if name and alias and "/" not in alias:
            return ModelRef(name, alias=alias)
    elif "/" in path:
        name, _, rest = path.partition("/")
        if name and rest and "/" not in rest:
            if rest.isdigit():
                return ModelRef(name, version=rest)
            return ModelRef(name)  # latest or a (deprecated) stage: MLflow resolves it
    elif path.startswith("m-"):  # a logged model's id (MLflow 3): not in the registry tables
        return None
    raise RegistryLookupError(f"model URI {model_uri!r}: malformed; use {shapes}")


def check_model_uri(tracking_uri: str, model_uri: str) -> Optional[ModelRef]:
    """Before any work: the URI's shape, the store reachable, and the model with its version or alias registered
    there (where the store can be probed). Returns what the URI names (None for runs:/ URIs)."""
    ref = parse_model_uri(model_uri)
    check_reachable(tracking_uri)
    if ref is None:
        return None
    check_registered_model(tracking_uri, ref.name)
    if ref.version is not None:
        check_version(tracking_uri, ref.name, ref.version)
    if ref.alias is not None:
        found = lookup(tracking_uri, "alias", ref.name, ref.alias)
        if found is False:
            aliases = list_aliases(tracking_uri, ref.name)
            known = f" (its aliases: {', '.join('@' + a for a in aliases)})" if aliases else " (it has no alias)"
            raise RegistryLookupError(
                f"registered model {ref.name!r} has no alias @{ref.alias} in {tracking_uri}{known}; "
                "see `arena-pref models`, or give a version with `arena-pref promote VERSION`"
            )
    return ref


def check_registered_model(tracking_uri: str, name: str) -> None:
    if lookup(tracking_uri, "model", name) is False:
        raise RegistryLookupError(
            f"no registered model {name!r} in {tracking_uri}; train one with `arena-pref train` (or `arena-pref "
            "demo`), or point --tracking-uri / MLFLOW_TRACKING_URI at the store that holds it"
        )


def check_version(tracking_uri: str, name: str, version: str) -> None:
    if not str(version).isdigit():
        raise RegistryLookupError(f"version {version!r}: a registered version is a number; see `arena-pref models`")
    if lookup(tracking_uri, "version", name, str(version)) is False:
        raise RegistryLookupError(
            f"registered model {name!r} has no version {version} in {tracking_uri}; see `arena-pref models`"
        )


# -- look-ups: True (found), False (the store says it is not there), None (this store cannot be probed) ---------


def lookup(tracking_uri: str, what: str, name: str, key: Optional[str] = None) -> Optional[bool]:
    """Whether the store holds the registered model `name` (what="model"), its version `key` ("version") or its
    alias `key` ("alias")."""
    scheme = scheme_of(tracking_uri)
    if scheme == "sqlite":
        return _sqlite_lookup(sqlite_path(tracking_uri), what, name, key)
    if scheme in ("http", "https"):
        return _rest_lookup(tracking_uri, what, name, key)
    return None


_SQL = {
    "model": "SELECT 1 FROM registered_models WHERE name = ?",
    "version": f"SELECT 1 FROM model_versions WHERE name = ? AND version = ? AND current_stage != '{DELETED_STAGE}'",
    "alias": "SELECT 1 FROM registered_model_aliases WHERE name = ? AND alias = ?",
}


def _sqlite_rows(path: Path, sql: str, params: tuple) -> Optional[list]:
    """Rows of a read-only query; [] when the database file does not exist yet (an empty store: nothing is
    registered, and nothing is created by asking); None when the tables are not MLflow's as we know them."""
    if not path.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(sql, params).fetchall()
    except sqlite3.Error:
        return None


def _sqlite_lookup(path: Path, what: str, name: str, key: Optional[str]) -> Optional[bool]:
    rows = _sqlite_rows(path, _SQL[what], (name,) if key is None else (name, key))
    return None if rows is None else bool(rows)


def list_aliases(tracking_uri: str, name: str) -> list[str]:
    """The aliases of a registered model (for the error message; [] where the store cannot be probed)."""
    scheme = scheme_of(tracking_uri)
    if scheme == "sqlite":
        rows = _sqlite_rows(
            sqlite_path(tracking_uri), "SELECT alias FROM registered_model_aliases WHERE name = ?", (name,)
        )
        return sorted(r[0] for r in rows or [])
    if scheme in ("http", "https"):
        status, body = _get(_api(tracking_uri, "registered-models/get", name=name))
        if status == 200:
            return sorted(a.get("alias", "") for a in json.loads(body).get("registered_model", {}).get("aliases", []))
    return []


def _api(tracking_uri: str, endpoint: str, **params: str) -> str:
    return f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"


def _rest_lookup(tracking_uri: str, what: str, name: str, key: Optional[str]) -> Optional[bool]:
    if what == "model":
        url = _api(tracking_uri, "registered-models/get", name=name)
    elif what == "version":
        url = _api(tracking_uri, "model-versions/get", name=name, version=key or "")
    else:
        url = _api(tracking_uri, "registered-models/alias", name=name, alias=key or "")
    status, body = _get(url)
    if status == 200:
        return True
    if status in (400, 404) and "RESOURCE_DOES_NOT_EXIST" in (body or ""):
        return False
    if status is None:
        raise TrackingUnavailableError(
            f"MLflow tracking server {tracking_uri} is not reachable ({body}); start it with `arena-pref ui` (or "
            "`arena-pref stack up`), or point --tracking-uri / MLFLOW_TRACKING_URI at a running server"
        )
    return None  # unauthorized, an older server, ...: MLflow itself will answer


def _headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _get(url: str) -> tuple[Optional[int], str]:
    """(HTTP status, body) of a GET, with ATTEMPTS tries of TIMEOUT_S each; (None, reason) when nothing answered."""
    problem = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(PAUSES_S[min(attempt - 1, len(PAUSES_S) - 1)])
        request = urllib.request.Request(url, headers=_headers())  # noqa: S310 (an http(s) URL: checked by the caller)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (the user's store)
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return err.code, err.read().decode("utf-8", "replace")
            problem = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            problem = str(getattr(err, "reason", err))
    return None, problem
