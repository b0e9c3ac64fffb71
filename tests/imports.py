"""Which project modules a process holds under more than one name (one file imported twice: two module objects,
so an `except` clause of one copy misses the other copy's exception)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]
# The folders whose modules must have exactly one import name.
PROJECT_FOLDERS = ("pref_core", "tasks", "flows", "arena_pref", "bench")
# The import names that can reach them (MLflow runs the registered model's entry file under generated names such as
# code_model_<uuid>: that is executing a script, not importing a module, and carries no `except` across copies).
PROJECT_NAMES = ("pref_core", "tasks", "flows", "arena_pref", "bench")


def duplicate_module_names(modules: Mapping[str, ModuleType]) -> dict[str, list[str]]:
    """{project file: [its module names]} for every project file that `modules` (sys.modules) holds twice."""
    names: dict[str, list[str]] = {}
    for name, module in list(modules.items()):
        if name.split(".")[0] not in PROJECT_NAMES:
            continue
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        try:
            relative = path.relative_to(ROOT)
        except ValueError:
            continue
        if relative.parts and relative.parts[0] in PROJECT_FOLDERS:
            names.setdefault(relative.as_posix(), []).append(name)
    return {file: sorted(found) for file, found in names.items() if len(found) > 1}
