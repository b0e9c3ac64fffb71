"""`arena-pref stack | ui`: the local Prefect and MLflow servers and workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def register(sub) -> None:
    """stack, ui: the local servers."""
    stack = sub.add_parser("stack", help="local Prefect + MLflow servers and GPU workers: up | down | status")
    stack.add_argument("action", choices=["up", "down", "status"], help="start, stop or show the services")
    stack.add_argument("--gpus", type=int, default=None, help="fold workers (default: visible GPUs)")
    stack.add_argument(
        "--state-dir",
        default=None,
        help="pid files and logs of the services (default: .stack in the project folder: "
        "$ARENA_PREF_ROOT, the checkout, else the current folder)",
    )
    stack.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port")
    stack.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server port")
    stack.set_defaults(func=cmd_stack)

    ui = sub.add_parser("ui", help="MLflow UI on the local store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind")
    ui.add_argument("--port", type=int, default=5000, help="port to bind")
    ui.set_defaults(func=cmd_ui)


def cmd_stack(args) -> int:
    from arena_pref import stack

    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.action == "up":
        state = stack.up(state_dir, gpus=args.gpus, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
        print("\n".join(stack.status(state_dir)))
        print("\nIn your shell:")
        print(f"  export PREFECT_API_URL={state.prefect_api_url} MLFLOW_TRACKING_URI={state.mlflow_url}")
        print(
            "  prefect deployment run 'cv-training/gpu' --param config_path=configs/tiny.yaml "
            "--param overrides='[\"data.train_csv=PATH\"]' --watch"
        )
    elif args.action == "down":
        stopped = stack.down(state_dir)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    else:
        print("\n".join(stack.status(state_dir)))
    return 0


def cmd_ui(args) -> int:
    from arena_pref.tasks import resources

    launcher = resources.shipped_file("mlflow/launch.sh")
    # The store is the project folder's (never the installed package's); mlflow is the one beside this python.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    os.execve(
        "/bin/bash",
        ["bash", str(launcher), "--store", str(resources.store_dir()), "--host", args.host, "--port", str(args.port)],
        env,
    )
    return 0  # not reached: the launcher replaces this process
