"""The console contract: only arena-pref's own lines reach the terminal; everything else goes to the command's log.

Every subcommand runs inside a `CommandFrame` (arena_pref.cli opens it before the command imports anything heavy):

- file descriptors 1 and 2 point at the log file (C extensions, child processes and fold processes inherit that),
  and sys.stdout / sys.stderr plus every logging handler that wrote to them (Prefect's console handler included)
  write to it too: whatever a library prints, warns or logs, now or in a later release, lands in the log;
- our own lines go through one `Console` (summaries, one-line errors, warnings we word ourselves) and progress bars
  through the terminal descriptor published for pref_core.progress; both record each line they show into the log
  (pref_core.terminal), so the log says exactly what the user saw.

Where the log goes: `train` and `demo` place it at `<output_dir>/logs/<time>-<command>.log` and print its path
first. Other commands write to a temporary file, kept as `<project folder>/logs/<time>-<command>.log`
($ARENA_PREF_LOG_DIR to choose another folder) only when something besides our own lines was written (a library's
warning, a traceback); ARENA_PREF_KEEP_LOGS=1 keeps every one. `-v` (train, demo) shows everything on the terminal.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator, Optional

from arena_pref.environment import NO_PROGRESS_BARS
from pref_core.terminal import CONSOLE_FD_ENV, CONSOLE_PATH_ENV, RECORD_PREFIX, RecordingStream

LOG_DIR_ENV = "ARENA_PREF_LOG_DIR"
KEEP_LOGS_ENV = "ARENA_PREF_KEEP_LOGS"


def log_file_path(output_root: Path, command: str) -> Path:
    """outputs/logs/<UTC time>-<command>.log: one file per run, never overwritten by the next."""
    return output_root / "logs" / _log_name(command)


def _log_name(command: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return f"{stamp}-{command.replace(' ', '-')}.log"


def command_log_dir() -> Path:
    """Where the logs of commands other than train/demo are kept: $ARENA_PREF_LOG_DIR, else logs/ in the project
    folder (arena_pref.tasks.resources.project_root)."""
    explicit = os.environ.get(LOG_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    from arena_pref.tasks import resources

    return resources.project_root() / "logs"


class Console:
    """Where the CLI writes for the user: `out` (results, summaries), `err` (bars, warnings, errors)."""

    def __init__(self, out: IO[str], err: IO[str], log_path: Optional[Path] = None):
        self.out, self.err, self.log_path = out, err, log_path

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def warn(self, text: str) -> None:
        """A warning we word ourselves: `warning: ...` on stderr."""
        self.err.write(f"warning: {text}\n")
        self.err.flush()

    def error(self, text: str) -> None:
        """An error line (or a short report, one line per problem): `error: ...` on stderr."""
        self.err.write(f"error: {text}\n")
        self.err.flush()


class _Redirect(io.TextIOBase):
    """sys.stdout / sys.stderr during a command: writes go to the log file; after the command, to the stream that
    was there before (so a logging handler created during the command keeps working afterwards)."""

    def __init__(self, target: IO[str]):
        super().__init__()
        self.target = target

    def write(self, text: str) -> int:
        self.target.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"


def _terminal(stream: IO[str], saved_fd: int) -> IO[str]:
    """What the user's lines are written to: a duplicate of the saved descriptor when `stream` wrote to descriptor
    1 or 2 (a terminal, a pipe), else `stream` itself (a test's capture buffer)."""
    try:
        writes_to_fd = stream.fileno() in (1, 2)
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        writes_to_fd = False
    if not writes_to_fd:
        return stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=encoding, errors="replace")


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


class CommandFrame:
    """One command's console and log file (see the module docstring). `close()` ends it; it is idempotent and also
    registered with atexit, so that lines libraries print while the interpreter exits (Prefect stopping its
    temporary server) still go to the log when the CLI leaves the frame open until exit."""

    def __init__(self, command: str, verbose: bool = False):
        self.command = command
        self.verbose = verbose
        self.placed = False  # the log is at its final, announced place (train, demo)
        self.closed = False
        if verbose:
            self.console = Console(sys.stdout, sys.stderr)
            self.log_path: Optional[Path] = None
            self.keep_path: Optional[Path] = None
            return
        # Where the log is kept when it holds more than our own lines (named in a bug's error line).
        self.keep_path = command_log_dir() / _log_name(command)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        fd, temp = tempfile.mkstemp(prefix="arena-pref-", suffix=".log")
        os.close(fd)
        self.log_path = Path(temp)
        self._log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        self._saved = os.dup(1), os.dup(2)
        out = RecordingStream(_terminal(sys.stdout, self._saved[0]), self._log)
        err = RecordingStream(_terminal(sys.stderr, self._saved[1]), self._log)
        self.console = Console(out, err, self.log_path)
        self._old_std = sys.stdout, sys.stderr
        self._redirects = _Redirect(self._log), _Redirect(self._log)
        self._old_env = {key: os.environ.get(key) for key in (*NO_PROGRESS_BARS, CONSOLE_FD_ENV, CONSOLE_PATH_ENV)}
        handlers = _std_handlers()
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        sys.stdout, sys.stderr = self._redirects
        self._old_streams = {handler: _set_handler_stream(handler, self._redirects[1]) for handler in handlers}
        # Forced for the command, not defaulted: library bars only clutter the log file (restored at close).
        os.environ.update(NO_PROGRESS_BARS)
        os.environ[CONSOLE_FD_ENV] = str(self._saved[1])
        # Fold processes inherit no descriptor (multiprocessing spawn): they open the terminal by path.
        console_path = Path(f"/proc/{os.getpid()}/fd/{self._saved[1]}")
        if console_path.exists():  # Linux; elsewhere their bars stay in the log file
            os.environ[CONSOLE_PATH_ENV] = str(console_path)
        _silence_libraries()
        atexit.register(self.close)

    def place_log(self, path: Path) -> None:
        """Move the log to `path` (kept whatever is written): what was logged so far, and everything after."""
        if self.verbose or self.closed:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log.flush()
        shutil.copyfile(self.log_path, path)
        new = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        os.dup2(new.fileno(), 1)
        os.dup2(new.fileno(), 2)
        for redirect in self._redirects:
            redirect.target = new
        for stream in (self.console.out, self.console.err):
            stream.record = new
        old, old_path = self._log, self.log_path
        self._log, self.log_path, self.console.log_path, self.keep_path, self.placed = new, path, path, path, True
        old.close()
        old_path.unlink(missing_ok=True)

    def log_exception(self, error: BaseException) -> None:
        """The full traceback of `error`, into the log (never onto the terminal)."""
        if self.verbose or self.closed:
            return
        traceback.print_exception(type(error), error, error.__traceback__, file=self._log)
        self._log.flush()

    def close(self) -> Optional[Path]:
        """Give the process its terminal back; returns where the log was kept (None: nothing worth keeping)."""
        if self.closed:
            return self.log_path if self.placed else None
        self.closed = True
        if self.verbose:
            return None
        for stream in (sys.stdout, sys.stderr, self.console.out, self.console.err):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        if (sys.stdout, sys.stderr) == self._redirects:
            sys.stdout, sys.stderr = self._old_std
        for redirect, old in zip(self._redirects, self._old_std):
            redirect.target = old
        for handler, stream in self._old_streams.items():
            _set_handler_stream(handler, stream)
        for key, value in self._old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for stream in (self.console.out, self.console.err):
            stream.record = None
            if stream.target not in self._old_std:  # our duplicate of the terminal
                with contextlib.suppress(Exception):
                    stream.target.close()
        self._log.close()
        for fd in self._saved:
            os.close(fd)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        return self._keep_log()

    def _keep_log(self) -> Optional[Path]:
        if self.placed:
            return self.log_path
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        foreign = any(not line.startswith(RECORD_PREFIX) for line in text.splitlines())
        if not (foreign or os.environ.get(KEEP_LOGS_ENV, "").strip() not in ("", "0")):
            self.log_path.unlink(missing_ok=True)
            return None
        target = self.keep_path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.log_path, target)
        except OSError:  # an unwritable project folder: the log stays in the temporary folder
            return self.log_path
        self.log_path = target
        return target


@contextlib.contextmanager
def command_frame(command: str, verbose: bool = False) -> Iterator[CommandFrame]:
    """A CommandFrame for the block (closed at its end)."""
    frame = CommandFrame(command, verbose)
    try:
        yield frame
    finally:
        frame.close()


def _silence_libraries() -> None:
    """Progress bars that libraries already imported decided on at import time, not by environment variable
    (importing them here would cost seconds: the ones imported later read the environment set above)."""
    if "datasets" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        with contextlib.suppress(Exception):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
