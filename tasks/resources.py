"""Where things are: the project folder (where stores land) and the files the package ships.

The project folder holds what runs write by default: the local MLflow store (`mlflow/`: SQLite,
artifacts, server.json), the stack's state (`.stack/`) and what workers run in. It is

  1. $ARENA_PREF_ROOT when set (the stack sets it for its servers and workers),
  2. else the checkout when the code runs from one (pyproject.toml, prefect.yaml and flows/ beside tasks/),
  3. else the current folder: after `pip install`, the package lives in site-packages, where nothing is written.

The shipped files are the recipes `configs/*.yaml`, `prefect.yaml` and the MLflow launcher `mlflow/launch.sh`:
in a checkout the top-level files themselves, in an installed package its data under `arena_pref/project_files/`
(pyproject.toml maps them there). That folder has no `__init__.py`: its `mlflow/` is data, never a package.

It sits in the tasks layer, which reads it (the store, the recipes a flow parameter names), and the app above
uses it too. Standard library only, so the CLI reads it before anything heavy is imported (find_config
imports pref_core's ConfigError only to raise it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

ROOT_ENV = "ARENA_PREF_ROOT"
# The folder that holds this module's package (tasks/): the installed `arena_pref` package, or the checkout
# itself when the code runs from one (also an editable install).
BASE_DIR = Path(__file__).resolve().parents[1]
# What makes that folder a checkout (site-packages has none of them).
_CHECKOUT_MARKERS = ("pyproject.toml", "prefect.yaml", "flows")


def _is_checkout(folder: Path) -> bool:
    return all((folder / marker).exists() for marker in _CHECKOUT_MARKERS)


def checkout_root() -> Optional[Path]:
    """The source checkout the package is imported from (also an editable install), else None."""
    return BASE_DIR if _is_checkout(BASE_DIR) else None


# Where the shipped files are: the checkout's top level, else the installed package's data.
PROJECT_FILES = BASE_DIR if _is_checkout(BASE_DIR) else BASE_DIR / "project_files"


def project_root() -> Path:
    """$ARENA_PREF_ROOT, else the checkout, else the current folder (see the module docstring)."""
    explicit = os.environ.get(ROOT_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    return checkout_root() or Path.cwd().resolve()


def store_dir() -> Path:
    """The local MLflow store: SQLite database, artifacts, the running server's server.json and log."""
    return project_root() / "mlflow"


def stack_state_dir() -> Path:
    """The default state folder of `arena-pref stack` (pid files, logs, the Prefect database)."""
    return project_root() / ".stack"


def shipped_file(relative: str) -> Path:
    """A file the package ships, e.g. `prefect.yaml`, `mlflow/launch.sh`, `configs/tiny.yaml` (resolved:
    in a checkout, the top-level file itself)."""
    path = (PROJECT_FILES / relative).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{PROJECT_FILES / relative}: missing from the installed package; "
            "reinstall arena-pref (pip install --force-reinstall arena-pref)"
        )
    return path


def shipped_recipes() -> dict[str, Path]:
    """The shipped configs by file name, e.g. {'tiny.yaml': .../configs/tiny.yaml}."""
    return {path.name: path.resolve() for path in sorted((PROJECT_FILES / "configs").glob("*.yaml"))}


def find_config(path: Union[str, Path]) -> Path:
    """The YAML a `--config` / `config_path` names: the path itself (relative to the current folder), else
    relative to the project folder, else the shipped recipe of that name (`configs/tiny.yaml` or `tiny.yaml`),
    so that `arena-pref train --config configs/tiny.yaml` works from an empty folder after pip install.
    Found nowhere: pref_core's ConfigError, one line naming the path, where it was looked for, and the fix."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.is_absolute():
        in_project = project_root() / given
        if in_project.is_file():
            return in_project
        if given.parent in (Path("."), Path("configs")) and given.name in shipped_recipes():
            return shipped_recipes()[given.name]
    from pref_core.config.schema import ConfigError  # only now: this module stays standard library for the CLI's start

    names = ", ".join(f"configs/{name}" for name in shipped_recipes()) or "none"
    raise ConfigError(
        [
            f"config file {str(path)!r} not found (looked here, in {project_root()} and among the "
            f"shipped recipes {names}); pass an existing YAML, e.g. --config configs/tiny.yaml"
        ]
    )
