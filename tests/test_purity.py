"""pref_core stays a pure library: no prefect/mlflow imports, no hard-coded absolute paths, no eval/exec."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pref_core"
SOURCES = sorted(PACKAGE.rglob("*.py"))

IMPORT_ALL = """
import importlib, pkgutil, sys
import pref_core
names = [m.name for m in pkgutil.walk_packages(pref_core.__path__, "pref_core.")]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "mlflow"))
print("IMPORTED", len(names), names)
assert not leaked, f"pref_core pulled in orchestration/tracking modules: {leaked[:10]}"
"""


def test_importing_pref_core_does_not_import_prefect_or_mlflow():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pref_core.data.arena" in result.stdout and "pref_core.text.tokenization" in result.stdout


# A string that starts like an absolute path: /x, ~/x, C:\x (docstrings are prose and never do).
ABSOLUTE_PATH = re.compile(r"^(/[A-Za-z_.]|~/|[A-Za-z]:[\\/])")


def test_no_hard_coded_absolute_paths():
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ABSOLUTE_PATH.match(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not found, "hard-coded absolute paths (take them from the config instead):\n" + "\n".join(found)


def test_no_eval_or_exec():
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else None
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "builtins":
                    name = func.attr
                if name in ("eval", "exec"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}()")
    assert not found, "eval/exec in pref_core (parse data with json.loads):\n" + "\n".join(found)


def test_the_scans_see_the_package():
    assert {p.name for p in SOURCES} >= {"arena.py", "prompts.py", "tokenization.py", "folds.py", "metrics.py"}
