"""`arena-pref stack | ui`: the local Prefect and MLflow servers and workers."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from pref_core.errors import UserError


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
    from arena_pref.tasks import resources

    explicit_root = os.environ.get(resources.ROOT_ENV)
    if explicit_root and not Path(explicit_root).expanduser().is_dir():
        raise UserError(
            f"{resources.ROOT_ENV}={explicit_root}: no such folder; point it at the project folder (the one holding "
            f"configs/ and mlflow/) or unset it"
        )
    console = args.console
    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.action == "up":
        state = stack.up(state_dir, gpus=args.gpus, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
        for line in stack.status(state_dir):
            console.print(line)
        console.print("")
        console.print("In your shell:")
        console.print(f"  export PREFECT_API_URL={state.prefect_api_url} MLFLOW_TRACKING_URI={state.mlflow_url}")
        console.print(
            "  prefect deployment run 'cv-training/gpu' --param config_path=configs/tiny.yaml "
            "--param overrides='[\"data.train_csv=PATH\"]' --watch"
        )
    elif args.action == "down":
        stopped = stack.down(state_dir)
        console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    else:
        for line in stack.status(state_dir):
            console.print(line)
    return 0


def check_port_free(host: str, port: int) -> None:
    """One line when `host:port` cannot be bound (another server holds it), before anything starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise UserError(
                f"--port {port}: cannot listen on {host}:{port} ({reason}); another server holds it: choose "
                "another with --port N, or stop that server"
            ) from None


def _interrupt(signum, frame) -> None:
    """SIGTERM / SIGHUP handled as Ctrl-C: the caller's `finally` stops what it started."""
    raise KeyboardInterrupt


def cmd_ui(args) -> int:
    """The MLflow UI on the local store: the server's own output goes to the command's log (kept in logs/ in the
    project folder); the console says the URL, the log and how to stop it. Ctrl-C stops the server."""
    import signal
    import subprocess
    import time
    import urllib.request

    from arena_pref import console as console_module
    from arena_pref import interruption
    from arena_pref.tasks import resources

    console, frame = args.console, args.frame
    check_port_free(args.host, args.port)
    launcher = resources.shipped_file("mlflow/launch.sh")
    store = resources.store_dir()
    if not frame.verbose:
        frame.place_log(console_module.command_log_dir() / Path(frame.keep_path).name)
    # The store is the project folder's (never the installed package's); mlflow is the one beside this python.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    command = ["bash", str(launcher), "--store", str(store), "--host", args.host, "--port", str(args.port)]
    # Its own process group: Ctrl-C reaches this process only, which then stops the server's whole group. A `kill`
    # or a closed terminal (SIGTERM, SIGHUP) stops it the same way, and if this process dies anyway (SIGKILL), Linux
    # sends the server SIGTERM (parent-death signal): no orphan server keeps the port.
    server = subprocess.Popen(  # noqa: S603 (our launcher)
        command, env=env, start_new_session=True, preexec_fn=interruption.die_with_parent()
    )
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else host}:{args.port}"
    where = f"; its log: {frame.log_path}" if frame.log_path else ""
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise UserError(f"the MLflow server stopped at start (exit code {server.returncode}){where}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:  # noqa: S310 (loopback)
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise UserError(f"the MLflow server did not answer at {url} within 120 s{where}")
            time.sleep(0.3)
        console.print(f"MLflow UI at {url} on the store {store} (Ctrl-C stops it){where}")
        server.wait()
        raise UserError(f"the MLflow server stopped (exit code {server.returncode}){where}")
    except KeyboardInterrupt:
        console.print("MLflow UI stopped")
        return 0
    finally:
        if server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()
