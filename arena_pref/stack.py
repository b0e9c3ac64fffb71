"""`arena-pref stack up|down|status`: a local Prefect server, MLflow server and workers, managed by PID.

`up` starts, each in its own process group and bound to 127.0.0.1:
  - a Prefect server (its database under the state folder),
  - the MLflow tracking server (mlflow/launch.sh settings: one worker, proxied artifacts),
  - one orchestration worker (pool `arena-orchestration`, runs the parent flows),
  - N GPU workers (pool `arena-gpu`, `--limit 1` each, CUDA_VISIBLE_DEVICES=i, a scratch folder each),
then creates the pools and deploys the local deployments of the shipped prefect.yaml. `down` stops exactly the
process groups that `up` recorded; `status` prints their health and URLs. The state folder (default
`.stack` in the project folder, arena_pref.tasks.resources) holds logs, pid files and the Prefect database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from arena_pref import environment
from arena_pref.tasks import resources
from pref_core.errors import UserError

ORCHESTRATION_POOL = "arena-orchestration"
GPU_POOL = "arena-gpu"
LOCAL_DEPLOYMENTS = ("cv-training/gpu", "train-fold/gpu", "predict/local")


class StackError(UserError, RuntimeError):
    pass


@dataclass
class StackState:
    prefect_api_url: str
    mlflow_url: str
    state_dir: str
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid (= process group id)

    @classmethod
    def load(cls, state_dir: Path) -> Optional["StackState"]:
        path = state_dir / "stack.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self) -> None:
        Path(self.state_dir, "stack.json").write_text(json.dumps(asdict(self), indent=2))


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours is not alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _free_port(preferred: int) -> int:
    for port in [preferred, 0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return sock.getsockname()[1]
            except OSError:
                continue
    raise StackError("no free port on 127.0.0.1")


def _wait_http(url: str, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise StackError(f"{what} did not answer at {url} within {timeout_s:.0f} s; see {log}")


def base_env(state: StackState) -> dict[str, str]:
    """The servers' and workers' environment: ours, the product's defaults (arena_pref.environment; no bars
    in their logs) and the stack's URLs and project folder. Hub settings (HF_TOKEN, HF_HOME, HF_HUB_OFFLINE,
    HF_ENDPOINT) come from the user's environment unchanged."""
    env = environment.child_env(*environment.PRODUCT, environment.NO_PROGRESS_BARS)
    env.update(
        {
            "PREFECT_API_URL": state.prefect_api_url,
            "MLFLOW_TRACKING_URI": state.mlflow_url,
            resources.ROOT_ENV: str(resources.project_root()),
        }
    )
    return env


def _spawn(state: StackState, name: str, argv: list[str], env: dict[str, str]) -> int:
    log = Path(state.state_dir, "logs", f"{name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        # A new session: its own process group, so `down` can stop it and all its children by PID,
        # and the process does not inherit our terminal's signals.
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=resources.project_root(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state.processes[name] = proc.pid
    state.save()
    return proc.pid


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(argv, env=env, cwd=resources.project_root(), capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"{what} failed ({' '.join(argv[:4])} ...):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def count_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 (no torch, no driver, a broken CUDA install: all mean no GPU to count)
        return 0


def up(
    state_dir: Optional[Path] = None,
    gpus: Optional[int] = None,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    mlflow_store: Optional[Path] = None,
    deploy: bool = True,
) -> StackState:
    """Start the stack; `state_dir` and `mlflow_store` default to .stack and mlflow in the project folder."""
    state_dir = Path(state_dir or resources.stack_state_dir()).resolve()
    existing = StackState.load(state_dir)
    if existing and any(_alive(pid) for pid in existing.processes.values()):
        raise StackError(f"a stack is already running (see `arena-pref stack status --state-dir {state_dir}`)")
    n_gpus = count_gpus() if gpus is None else gpus
    if n_gpus < 1:
        raise StackError("no GPU visible: pass --gpus N to start N CPU fold workers for testing")
    state_dir.mkdir(parents=True, exist_ok=True)
    prefect_port, mlflow_port = _free_port(prefect_port), _free_port(mlflow_port)
    state = StackState(
        prefect_api_url=f"http://127.0.0.1:{prefect_port}/api",
        mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        state_dir=str(state_dir),
    )
    state.save()
    env = base_env(state)
    try:
        prefect_env = {**env, "PREFECT_HOME": str(state_dir / "prefect-home")}
        _spawn(
            state,
            "prefect-server",
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            prefect_env,
        )
        store = Path(mlflow_store or resources.store_dir()).resolve()
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        _spawn(
            state,
            "mlflow-server",
            [
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination",
                str(store / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            env,
        )
        _wait_http(state.prefect_api_url + "/health", 90, "Prefect server", state_dir / "logs" / "prefect-server.log")
        _wait_http(state.mlflow_url + "/health", 90, "MLflow server", state_dir / "logs" / "mlflow-server.log")
        for pool in (ORCHESTRATION_POOL, GPU_POOL):
            _run(
                [_bin("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                env,
                f"creating pool {pool}",
            )
        if deploy:
            # Only the deployments of the local pools: the */k8s ones need a Kubernetes work pool.
            # The shipped prefect.yaml: module entrypoints, which Prefect imports from the installed package.
            _run(
                [
                    _bin("prefect"),
                    "--no-prompt",
                    "deploy",
                    "--prefect-file",
                    str(resources.shipped_file("prefect.yaml")),
                    *(arg for name in LOCAL_DEPLOYMENTS for arg in ("--name", name)),
                ],
                env,
                "deploying prefect.yaml",
            )
        _spawn(
            state,
            "worker-orchestration",
            [
                _bin("prefect"),
                "worker",
                "start",
                "--pool",
                ORCHESTRATION_POOL,
                "--name",
                "orchestration",
                "--type",
                "process",
            ],
            env,
        )
        for i in range(n_gpus):
            worker_env = {
                **env,
                "CUDA_VISIBLE_DEVICES": str(i),
                "ARENA_PREF_OUTPUT_DIR": str(state_dir / "workers" / f"gpu-{i}"),
            }
            _spawn(
                state,
                f"worker-gpu-{i}",
                [
                    _bin("prefect"),
                    "worker",
                    "start",
                    "--pool",
                    GPU_POOL,
                    "--name",
                    f"gpu-{i}",
                    "--type",
                    "process",
                    "--limit",
                    "1",
                ],
                worker_env,
            )
    except BaseException:
        down(state_dir)
        raise
    return state


def down(state_dir: Optional[Path] = None, timeout_s: float = 20.0) -> list[str]:
    """Stop exactly the process groups `up` recorded: SIGTERM, then SIGKILL after `timeout_s`."""
    state = StackState.load(Path(state_dir or resources.stack_state_dir()).resolve())
    if state is None:
        return []
    stopped = []
    for name, pid in state.processes.items():
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(name)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout_s
    for name, pid in state.processes.items():
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group (flow-run subprocesses too)
            os.killpg(pid, signal.SIGKILL)
    state.processes = {}
    state.save()
    return stopped


def status(state_dir: Optional[Path] = None) -> list[str]:
    state = StackState.load(Path(state_dir or resources.stack_state_dir()).resolve())
    if state is None or not state.processes:
        return ["no stack running (start one with `arena-pref stack up`)"]
    lines = [
        f"Prefect UI/API: {state.prefect_api_url.removesuffix('/api')}"
        f"  (export PREFECT_API_URL={state.prefect_api_url})",
        f"MLflow UI:      {state.mlflow_url}  (export MLFLOW_TRACKING_URI={state.mlflow_url})",
    ]
    for name, pid in state.processes.items():
        lines.append(f"  {name:<22} pid {pid:<8} {'running' if _alive(pid) else 'STOPPED'}")
    for what, url in (("Prefect", state.prefect_api_url + "/health"), ("MLflow", state.mlflow_url + "/health")):
        try:
            with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (loopback)
                health = "healthy" if response.status == 200 else f"HTTP {response.status}"
        except OSError as err:
            health = f"unreachable ({err})"
        lines.append(f"  {what} health: {health}")
    lines.append(f"logs: {Path(state.state_dir) / 'logs'}")
    return lines
