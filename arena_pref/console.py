"""What a user sees while `arena-pref train`/`demo` runs: progress bars and a summary, nothing else.

Quiet mode (the default) sends everything else — Prefect task states, library logs, third-party
warnings and progress bars, also from fold processes — to one log file per run. It works at two
levels: file descriptors 1 and 2 point at the log file (C extensions and child processes inherit
that), and sys.stdout / sys.stderr plus every logging handler that wrote to them (Prefect's console
handler included) write to it too. The console itself stays reachable through duplicated
descriptors: stdout for the summary, stderr for bars (ARENA_PREF_CONSOLE_FD, and its /proc path
ARENA_PREF_CONSOLE_PATH for fold processes; see pref_core.progress).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator, Optional

from arena_pref.environment import NO_PROGRESS_BARS
from pref_core.progress import CONSOLE_FD_ENV, CONSOLE_PATH_ENV


def log_file_path(output_root: Path, command: str) -> Path:
    """outputs/logs/<UTC time>-<command>.log: one file per run, never overwritten by the next."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return output_root / "logs" / f"{stamp}-{command}.log"


class Console:
    """Where the CLI writes for the user: `out` (summary lines), `err` (progress bars, warnings)."""

    def __init__(self, out: IO[str], err: IO[str], log_path: Optional[Path] = None):
        self.out, self.err, self.log_path = out, err, log_path

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _std_handlers() -> list[logging.Handler]:
    """Logging handlers (any logger) that write to the process's stdout or stderr."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if isinstance(logging.root.manager.loggerDict[name], logging.Logger)
    ]
    std = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    found: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            # logging.lastResort (_StderrHandler) looks sys.stderr up at each record: nothing to swap there.
            if type(handler).__name__ == "_StderrHandler" or not isinstance(handler, logging.StreamHandler):
                continue
            if id(getattr(handler, "stream", None)) in std:
                found[id(handler)] = handler
    return list(found.values())


def _set_handler_stream(handler: logging.StreamHandler, stream: IO[str]) -> IO[str]:
    old = handler.setStream(stream) if handler.stream is not stream else stream
    rich_console = getattr(handler, "console", None)  # Prefect's handler prints through a rich Console
    if rich_console is not None and hasattr(rich_console, "file"):
        rich_console.file = stream
    return old


@contextlib.contextmanager
def quiet_run(log_path: Path, verbose: bool = False) -> Iterator[Console]:
    """Run the body with its output in `log_path` (unless `verbose`); yields the user's Console."""
    if verbose:
        yield Console(sys.stdout, sys.stderr)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = Console(
        os.fdopen(os.dup(saved_out), "w", buffering=1), os.fdopen(os.dup(saved_err), "w", buffering=1), log_path
    )
    log_file = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed below)
    old_std = sys.stdout, sys.stderr
    old_env = {key: os.environ.get(key) for key in (*NO_PROGRESS_BARS, CONSOLE_FD_ENV, CONSOLE_PATH_ENV)}
    handlers = _std_handlers()
    old_streams = {}
    try:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        sys.stdout = sys.stderr = log_file
        for handler in handlers:
            old_streams[handler] = _set_handler_stream(handler, log_file)
        # Forced for the run, not defaulted: library bars only clutter the log file (restored below).
        os.environ.update(NO_PROGRESS_BARS)
        os.environ[CONSOLE_FD_ENV] = str(saved_err)
        # Fold processes inherit no descriptor (multiprocessing spawn): they open the console by path.
        console_path = Path(f"/proc/{os.getpid()}/fd/{saved_err}")
        if console_path.exists():  # Linux; elsewhere their bars stay in the log file
            os.environ[CONSOLE_PATH_ENV] = str(console_path)
        _silence_libraries()
        yield console
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        sys.stdout, sys.stderr = old_std
        for handler, stream in old_streams.items():
            _set_handler_stream(handler, stream)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        log_file.close()
        os.close(saved_out)
        os.close(saved_err)
        console.out.flush()
        console.err.flush()


def _silence_libraries() -> None:
    """Progress bars the libraries decide on at import time, not by environment variable."""
    with contextlib.suppress(Exception):
        import datasets

        datasets.disable_progress_bars()
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
