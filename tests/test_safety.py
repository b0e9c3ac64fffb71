"""Static guarantees: no eval/exec/pickle on user data, loopback-only servers, no shadowing `mlflow` package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_DIRS = ["pref_core", "tasks", "flows", "arena_pref", "bench"]


def _python_files():
    for folder in PRODUCT_DIRS:
        yield from (ROOT / folder).rglob("*.py")


def test_no_eval_exec_or_pickle_in_product_code():
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}()")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n and n.split(".")[0] in {"pickle", "cloudpickle", "dill", "joblib"} for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports a pickle module")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "read_pickle":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} read_pickle")
    assert not offenders, offenders


def test_torch_load_is_never_used_on_user_files():
    # torch.load unpickles; adapters are safetensors only.
    hits = [str(p.relative_to(ROOT)) for p in _python_files() if re.search(r"\btorch\.load\(", p.read_text())]
    assert not hits, hits


def test_servers_bind_loopback_by_default():
    launcher = (ROOT / "mlflow" / "launch.sh").read_text()
    assert 'host="127.0.0.1"' in launcher
    stack = (ROOT / "arena_pref" / "stack.py").read_text()
    assert stack.count('"--host", "127.0.0.1"') == 2  # the Prefect and MLflow servers
    assert "0.0.0.0" not in stack


def test_mlflow_folder_never_shadows_the_package():
    assert not (ROOT / "mlflow" / "__init__.py").exists()
    import mlflow

    assert Path(mlflow.__file__).parent != ROOT / "mlflow"


def test_registered_model_is_logged_from_code_not_pickled():
    registry = (ROOT / "tasks" / "registry.py").read_text()
    assert 'with_name("pyfunc_entry.py")' in registry
