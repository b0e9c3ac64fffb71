"""Where things are (arena_pref.tasks.resources): the project folder, the shipped files, and the wheel that ships
them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from arena_pref.tasks import resources
from pref_core.config.loading import load_config
from pref_core.config.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """The package as pip installs it: in a site-packages folder with no checkout around it, no ARENA_PREF_ROOT,
    and an empty current folder."""
    site = tmp_path / "site-packages" / "arena_pref"
    site.mkdir(parents=True)
    monkeypatch.setattr(resources, "BASE_DIR", site)
    monkeypatch.delenv(resources.ROOT_ENV, raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    return empty


def test_the_project_folder_is_the_env_then_the_checkout_then_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(resources.ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resources.checkout_root() == ROOT
    assert resources.project_root() == ROOT  # a checkout wins over the current folder
    assert resources.store_dir() == ROOT / "mlflow" and resources.stack_state_dir() == ROOT / ".stack"

    monkeypatch.setenv(resources.ROOT_ENV, str(tmp_path / "project"))
    assert resources.project_root() == tmp_path / "project"  # the environment wins over the checkout
    assert resources.store_dir() == tmp_path / "project" / "mlflow"


def test_installed_the_stores_land_in_the_current_folder(installed):
    assert resources.checkout_root() is None
    assert resources.project_root() == installed.resolve()
    assert resources.store_dir() == installed.resolve() / "mlflow"
    from arena_pref.tasks import tracking

    assert tracking.local_store_uri() == f"sqlite:///{(installed.resolve() / 'mlflow' / 'mlflow.db').as_posix()}"
    assert tracking.git_commit() is None  # no checkout: no commit to record


def test_a_shipped_recipe_is_found_from_an_empty_folder(installed):
    for name in ("configs/tiny.yaml", "tiny.yaml"):
        path = resources.find_config(name)
        assert path == (ROOT / "configs" / "tiny.yaml").resolve()  # in the checkout the shipped file is this one
        assert load_config(path).model.tiny is not None
    (installed / "configs").mkdir()
    (installed / "configs" / "tiny.yaml").write_text("model: {name_or_path: my/own}\n")
    assert resources.find_config("configs/tiny.yaml") == Path("configs/tiny.yaml")  # a file here comes first


def test_a_config_found_nowhere_is_one_line_naming_it_and_the_fix(installed):
    for name in ("configs/nope.yaml", "elsewhere/tiny.yaml", str(installed / "tiny.yaml")):
        with pytest.raises(ConfigError) as caught:
            resources.find_config(name)
        (problem,) = caught.value.problems
        assert "\n" not in problem and repr(name) in problem and "--config configs/tiny.yaml" in problem


def test_the_cli_and_the_flow_load_a_shipped_recipe(installed):
    from arena_pref.commands.options import load_run_config
    from arena_pref.tasks.runs import resolve_config

    assert load_run_config("configs/tiny.yaml", ["cv.n_folds=3"]).cv.n_folds == 3
    assert resolve_config.fn(None, "configs/tiny.yaml", ["cv.n_folds=4"], None).cv.n_folds == 4


def test_the_shipped_deployments_have_module_entrypoints_prefect_can_load():
    """prefect.yaml names flows by module (arena_pref.flows.x:f), as Prefect imports them from the installed
    package; `stack up` deploys that file as it is."""
    from prefect.flows import load_flow_from_entrypoint

    from arena_pref import stack

    shipped = yaml.safe_load(resources.shipped_file("prefect.yaml").read_text())
    loaded = set()
    for deployment in shipped["deployments"]:
        assert deployment["entrypoint"].startswith("arena_pref.flows.") and ".py" not in deployment["entrypoint"]
        flow = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
        assert flow.fn.__module__ == deployment["entrypoint"].split(":")[0]
        loaded.add(f"{flow.name}/{deployment['name']}")
    assert set(stack.LOCAL_DEPLOYMENTS) <= loaded


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (path,) = out.glob("arena_pref-*.whl")
    return path


def test_the_wheel_ships_the_project_files_and_no_top_level_tasks_or_flows(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = "arena_pref/project_files/"
    assert {f"{files}prefect.yaml", f"{files}mlflow/launch.sh", f"{files}configs/tiny.yaml"} <= names
    assert {p.name for p in (ROOT / "configs").glob("*.yaml")} == {
        n.removeprefix(f"{files}configs/") for n in names if n.startswith(f"{files}configs/")
    }
    assert {"arena_pref/tasks/tracking.py", "arena_pref/flows/cv_training.py"} <= names
    wings = {p.parent.name for p in (ROOT / "pref_core").glob("*/__init__.py")}
    assert {f"pref_core/{wing}/__init__.py" for wing in wings} <= names  # every wing is in pyproject's list
    assert not [n for n in names if n.split("/")[0] in ("tasks", "flows", "mlflow", "configs")]
    assert not [
        n for n in names if n.endswith(("mlflow.db", "server.json", ".py")) and n.startswith(files)
    ]  # no store, and no module or package (none could shadow mlflow)


INSTALLED_PROBE = """
import json, sys
import mlflow
from arena_pref.tasks import resources
import arena_pref.flows.cv_training, arena_pref.tasks.training
from arena_pref import cli
cli.build_parser()  # every command group is in the wheel
print(json.dumps({"package": resources.BASE_DIR.as_posix(), "mlflow": mlflow.__file__,
                  "flows": arena_pref.flows.cv_training.__file__, "tasks": arena_pref.tasks.training.__file__,
                  "root": str(resources.project_root()), "tiny": str(resources.find_config("configs/tiny.yaml")),
                  "launcher": str(resources.shipped_file("mlflow/launch.sh"))}))
"""


def test_the_installed_wheel_runs_from_an_empty_folder(wheel, tmp_path):
    target, empty = tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {k: v for k, v in os.environ.items() if k not in (resources.ROOT_ENV, "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-c", INSTALLED_PROBE],
        cwd=empty,
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(target)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["package"] == (target / "arena_pref").as_posix()
    assert found["root"] == str(empty)  # the stores land here, not in site-packages
    assert found["tiny"].startswith(str(target)) and found["launcher"].startswith(str(target))
    assert not found["mlflow"].startswith(str(target))  # the shipped mlflow/ folder is data, never the package
    assert found["flows"] == (target / "arena_pref" / "flows" / "cv_training.py").as_posix()
    assert found["tasks"] == (target / "arena_pref" / "tasks" / "training.py").as_posix()
