"""One import name per module: arena_pref.tasks.* / arena_pref.flows.* for the top-level tasks/ and flows/ folders
(declared in pyproject.toml, no links), both from the checkout and from outside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.imports import ROOT, duplicate_module_names

# Every product module by its one name, then what sys.modules holds. Run from the checkout root, where `tasks`
# and `flows` are also top-level folders on sys.path (as under `python -m pytest`).
IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import arena_pref, arena_pref.flows, arena_pref.tasks, pref_core
names = []
for package in (pref_core, arena_pref, arena_pref.tasks, arena_pref.flows):
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    if not name.endswith(("pyfunc_entry", "smoke_real")):  # run by MLflow / as a script, never imported
        importlib.import_module(name)
from tests.imports import duplicate_module_names
print(json.dumps({"imported": names, "duplicates": duplicate_module_names(sys.modules),
                  "files": {n: getattr(m, "__file__", None) for n, m in sys.modules.items()
                            if n.split(".")[0] in ("arena_pref", "pref_core", "tasks", "flows")}}))
"""


def _probe(script: str, cwd, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_every_product_module_is_imported_under_one_name_from_the_checkout():
    found = _probe(IMPORT_EVERYTHING, ROOT, str(ROOT))
    assert {"arena_pref.tasks.training", "arena_pref.flows.cv_training", "arena_pref.cli"} <= set(found["imported"])
    assert not found["duplicates"], f"modules imported under two names: {found['duplicates']}"
    assert not [n for n in found["files"] if n.split(".")[0] in ("tasks", "flows")]
    assert found["files"]["arena_pref.tasks.training"] == str(ROOT / "tasks" / "training.py")
    assert found["files"]["arena_pref.flows.cv_training"] == str(ROOT / "flows" / "cv_training.py")


EDITABLE_PROBE = """
import importlib.util, json
import arena_pref.flows.cv_training, arena_pref.tasks.training, pref_core
print(json.dumps({"flows": arena_pref.flows.cv_training.__file__, "tasks": arena_pref.tasks.training.__file__,
                  "pref_core": pref_core.__file__,
                  "top_level": [n for n in ("tasks", "flows") if importlib.util.find_spec(n) is not None]}))
"""


def test_the_editable_install_imports_the_checkout_from_any_folder(tmp_path):
    """Outside the checkout only the installed names exist: the folders themselves are not on sys.path."""
    found = _probe(EDITABLE_PROBE, tmp_path)
    assert found["flows"] == str(ROOT / "flows" / "cv_training.py")
    assert found["tasks"] == str(ROOT / "tasks" / "training.py")
    assert found["pref_core"] == str(ROOT / "pref_core" / "__init__.py")
    assert found["top_level"] == []


def test_this_test_session_holds_each_module_once():
    """What the tests imported so far (the session's end checks again: tests/conftest.py)."""
    assert not duplicate_module_names(sys.modules)


def test_no_links_in_the_repository():
    listed = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert not [line for line in listed.splitlines() if line.startswith("120000")]
