"""Safety guarantees: no eval/exec/pickle/torch.load in product code, servers bound to loopback only, and the
repository's `mlflow/` folder never shadowing the `mlflow` package. (That the registered model loads without
unpickling anything is checked by loading it: tests/test_registry.py.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import servers

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_DIRS = ["pref_core", "tasks", "flows", "arena_pref", "bench"]
PICKLE_MODULES = {"pickle", "cloudpickle", "dill", "joblib"}


def _python_files():
    for folder in PRODUCT_DIRS:
        yield from (ROOT / folder).rglob("*.py")


def _unsafe_calls(path: Path) -> list[str]:
    """eval()/exec(), pickle-family imports, read_pickle and torch.load in one file's syntax tree (not its text:
    comments and strings do not count, aliases do)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(ROOT)
    torch_names = {"torch"}
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            offenders.append(f"{where}:{node.lineno} from torch import load")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}:
            offenders.append(f"{where}:{node.lineno} {node.func.id}()")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            if any(n and n.split(".")[0] in PICKLE_MODULES for n in names):
                offenders.append(f"{where}:{node.lineno} imports a pickle module")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "read_pickle":
            offenders.append(f"{where}:{node.lineno} read_pickle")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in torch_names
        ):
            offenders.append(f"{where}:{node.lineno} torch.load (unpickles; adapters are safetensors only)")
    return offenders


def test_no_eval_exec_pickle_or_torch_load_in_product_code():
    offenders = [o for path in _python_files() for o in _unsafe_calls(path)]
    assert not offenders, offenders


def test_the_unsafe_call_finder_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The finder above is a check of its own: it must flag each construct, aliased or not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch as T\nimport cloudpickle\nfrom torch import load\nimport pandas as pd\n"
        "T.load('x')\neval('1')\nexec('x=1')\npd.read_pickle('y')\n# torch.load in a comment\n"
        "s = 'eval(1)'\n"
    )
    found = " | ".join(_unsafe_calls(bad))
    for what in ("torch.load", "from torch import load", "eval()", "exec()", "imports a pickle module", "read_pickle"):
        assert what in found, (what, found)
    clean = tmp_path / "clean.py"
    clean.write_text("# torch.load(x), eval(y) only in a comment\ntext = 'pickle.load'\nimport json\njson.load\n")
    assert _unsafe_calls(clean) == []


@pytest.mark.skipif(not servers.has_proc_net(), reason="reads listening sockets from /proc/net (Linux)")
def test_arena_pref_ui_serves_mlflow_on_loopback_only(tmp_path):
    """`arena-pref ui` with its defaults, through the shipped launcher, with the project folder
    (ARENA_PREF_ROOT) a temporary one so that its database, log and server.json land there, not in the
    checkout: every socket its process group listens on is loopback, and this machine's other addresses are
    refused."""
    port = servers.free_port()
    env = dict(
        os.environ,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        DO_NOT_TRACK="true",
        ARENA_PREF_ROOT=str(tmp_path),
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    )
    # cmd_ui starts the launcher (which execs mlflow) in a session of its own and waits: the server is its child.
    script = "import sys; import arena_pref.cli as cli; sys.exit(cli.main(['ui', '--port', sys.argv[1]]))"
    log = open(tmp_path / "ui.log", "wb")  # noqa: SIM115 (the UI's output for as long as it runs; closed below)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        up = servers.wait_http_ok(f"http://127.0.0.1:{port}/health", 180, lambda: proc.poll() is None)
        assert up, (tmp_path / "ui.log").read_text()[-3000:]
        server_pids = servers.tree_pids(proc.pid)
        listening = servers.listening_addresses(server_pids)
        assert any(p == port for _, p in listening), listening
        assert all(servers.is_loopback(address) for address, _ in listening), listening
        for address in servers.non_loopback_ipv4():
            assert servers.refuses(address, port), f"port {port} answers on {address}"
        assert '"url": "http://127.0.0.1:' in (tmp_path / "mlflow" / "server.json").read_text()
    finally:
        servers.stop_group(proc.pid)
        proc.wait(timeout=30)
        log.close()
    assert not servers.group_pids(proc.pid)
    # SIGTERM to `arena-pref ui` stops its server too (a session of its own, so not reached by the group's signal).
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in server_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in server_pids if Path(f"/proc/{pid}").exists()]


@pytest.mark.skipif(not servers.has_proc_net(), reason="reads listening sockets from /proc/net (Linux)")
def test_the_listening_check_sees_a_server_bound_to_every_interface(tmp_path):
    """The loopback check above can fail: a server on 0.0.0.0 shows as such, and answers on another address."""
    port = servers.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert servers.wait_http_ok(f"http://127.0.0.1:{port}/", 60, lambda: proc.poll() is None)
        server_pids = servers.tree_pids(proc.pid)
        listening = servers.listening_addresses(server_pids)
        assert {address for address, p in listening if p == port} & {"0.0.0.0", "::"}, listening
        assert not all(servers.is_loopback(address) for address, _ in listening)
        others = servers.non_loopback_ipv4()
        if others:
            assert not servers.refuses(others[0], port)
    finally:
        servers.stop_group(proc.pid)
        proc.wait(timeout=30)


def test_mlflow_folder_never_shadows_the_package():
    import mlflow

    assert Path(mlflow.__file__).parent != ROOT / "mlflow"
    # From the repository root the current folder comes first on sys.path: `mlflow` must still be the package.
    done = subprocess.run(
        [sys.executable, "-c", "import mlflow; print(mlflow.__file__); mlflow.MlflowClient"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = Path(done.stdout.strip().splitlines()[-1]).resolve()
    assert loaded == Path(mlflow.__file__).resolve() and ROOT / "mlflow" not in loaded.parents, loaded
