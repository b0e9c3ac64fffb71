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
    found = [
        f"{_where(path, line)}: {module}"
        for path in sorted((ROOT / "tasks").glob("*.py"))
        for line, module, _ in _imports(path)
        if module.split(".")[:2] in (["arena_pref", "flows"], ["flows"])
    ]
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
    found = [
        f"{_where(path, line)}: {module}"
        for folder in ("tasks", "flows")
        for path in sorted((ROOT / folder).glob("*.py"))
        for line, module, names in _imports(path)
        if _layer(module) == "app" and not (module == "arena_pref" and set(names) <= {"tasks", "flows"})
    ]
    assert not found, "the app (the CLI, the stack, export) sits above tasks and flows:\n" + "\n".join(found)


def test_pref_core_imports_no_layer_above_it():
    above = ("prefect", "mlflow", "arena_pref", "tasks", "flows")
    found = [
        f"{_where(path, line)}: {module}"
        for path in sorted((ROOT / "pref_core").rglob("*.py"))
        for line, module, _ in _imports(path)
        if module.split(".")[0] in above
    ]
    assert not found, "pref_core is the pure library:\n" + "\n".join(found)


# pref_core's wings, lowest first: a module imports from its own wing, the shared leaves (pref_core/*.py: errors,
# hashing, publishing, progress) and wings of a lower rank only. evaluate and predict are siblings: predict
# applies what evaluate fits (the OOF temperature) and evaluate may score what predict writes; the cycle test
# keeps them apart module by module.
WING_RANKS = {"config": 1, "data": 2, "text": 3, "model": 4, "evaluate": 5, "predict": 5, "train": 6, "kaggle": 7}


def _core_module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _core_imports() -> dict[str, list[tuple[int, str]]]:
    """pref_core module -> (line, pref_core module it imports), at module level or inside functions."""
    modules = {_core_module(p): p for p in sorted((ROOT / "pref_core").rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        found = []
        for line, module, names in _imports(path):
            if module.split(".")[0] != "pref_core":
                continue
            # `from pref_core.evaluate import metrics` imports the module pref_core.evaluate.metrics
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            found += [(line, target) for target in targets if target != name]
        graph[name] = found
    return graph


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None  # None: pref_core itself or a shared leaf


def test_every_pref_core_module_is_in_a_wing_or_a_shared_leaf():
    leaves = {p.stem for p in (ROOT / "pref_core").glob("*.py")} - {"__init__"}
    wings = {p.name for p in (ROOT / "pref_core").iterdir() if (p / "__init__.py").is_file()}
    assert wings == set(WING_RANKS), "a new wing needs its rank in WING_RANKS"
    # terminal: the console frame's stdlib-only half, imported by the CLI before anything heavy and by the bundle.
    assert leaves <= {"errors", "hashing", "progress", "publish", "terminal"}, (
        f"modules outside a wing: {sorted(leaves)}"
    )


def test_no_pref_core_module_imports_a_wing_above_its_own():
    graph = _core_imports()
    assert "pref_core.evaluate.calibration" in {target for _, target in graph["pref_core.predict.ensemble"]}  # it sees
    found = []
    for name, imports in graph.items():
        own = _wing(name)
        for line, target in imports:
            wing = _wing(target)
            if own is None and wing is not None:
                found.append(f"{name}:{line}: {target} (a shared leaf imports no wing)")
            elif wing is not None and wing != own and WING_RANKS[wing] > WING_RANKS[own]:
                found.append(f"{name}:{line}: {target} ({wing} is above {own})")
    assert not found, "pref_core wings import downwards only:\n" + "\n".join(found)


def test_pref_core_has_no_import_cycles():
    graph = {name: {target for _, target in imports} for name, imports in _core_imports().items()}
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles in pref_core:\n" + "\n".join(cycles)


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
    assert not found, "private Prefect modules or names (they change without notice in minor releases):\n" + "\n".join(
        found
    )


def test_the_scan_sees_the_product():
    names = {p.relative_to(ROOT).as_posix() for p in PRODUCT}
    assert {
        "pref_core/evaluate/oof.py",
        "pref_core/train/fold.py",
        "tasks/training.py",
        "flows/cv_training.py",
        "arena_pref/cli.py",
    } <= names
