"""The layers import downwards only: app (arena_pref) -> flows -> tasks -> pref_core, and only public Prefect APIs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [p for folder in ("pref_core", "tasks", "flows", "arena_pref") for p in sorted((ROOT / folder).rglob("*.py"))]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import statement, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_no_task_imports_a_flow():
    found = [f"{_where(path, line)}: {module}" for path in sorted((ROOT / "tasks").glob("*.py"))
             for line, module, _ in _imports(path) if module.split(".")[:2] in (["arena_pref", "flows"], ["flows"])]
    assert not found, "tasks must not import flows (pass the flow object from the flow instead):\n" + "\n".join(found)


def _layer(module: str) -> str:
    """The layer a module name belongs to: core, tasks, flows, app, or other (third-party, standard library)."""
    parts = module.split(".")
    if parts[0] == "pref_core":
        return "core"
    if parts[0] == "arena_pref":
        return parts[1] if len(parts) > 1 and parts[1] in ("tasks", "flows") else "app"
    return "other"


def test_tasks_and_flows_import_nothing_of_the_app():
    found = [f"{_where(path, line)}: {module}" for folder in ("tasks", "flows") for path in sorted((ROOT / folder).glob("*.py"))
             for line, module, names in _imports(path)
             if _layer(module) == "app" and not (module == "arena_pref" and set(names) <= {"tasks", "flows"})]
    assert not found, "the app (the CLI, the stack, export) sits above tasks and flows:\n" + "\n".join(found)


def test_pref_core_imports_no_layer_above_it():
    above = ("prefect", "mlflow", "arena_pref", "tasks", "flows")
    found = [f"{_where(path, line)}: {module}" for path in sorted((ROOT / "pref_core").glob("*.py"))
             for line, module, _ in _imports(path) if module.split(".")[0] in above]
    assert not found, "pref_core is the pure library:\n" + "\n".join(found)


def test_only_public_prefect_apis():
    found = []
    for path in PRODUCT:
        for line, module, names in _imports(path):
            parts = module.split(".")
            if parts[0] != "prefect":
                continue
            private = [p for p in parts if p.startswith("_")] + [n for n in names if n.startswith("_")]
            if private or parts[:2] == ["prefect", "server"]:
                found.append(f"{_where(path, line)}: {module} {names}")
    assert not found, "private Prefect modules or names (they change without notice in minor releases):\n" + "\n".join(found)


def test_the_scan_sees_the_product():
    names = {p.relative_to(ROOT).as_posix() for p in PRODUCT}
    assert {"pref_core/oof.py", "tasks/training.py", "flows/cv_training.py", "arena_pref/cli.py"} <= names
