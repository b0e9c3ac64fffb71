"""Progress bars on the user's console, also from fold processes whose own output goes to a log file.

The CLI's quiet mode (arena_pref/console.py) sends stdout and stderr of the run, and of every fold
process it starts, to a log file, and publishes a duplicate of the console's stderr as the file
descriptor named by ARENA_PREF_CONSOLE_FD; fold processes, which inherit no descriptor, reach it by path
(ARENA_PREF_CONSOLE_PATH, from `console_child_env`).
Bars drawn here go to that descriptor; without it (tests, workers, `-v`) they go to sys.stderr.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Optional

from transformers import TrainerCallback

from pref_core.terminal import CONSOLE_FD_ENV, CONSOLE_PATH_ENV, RecordingStream

_streams: dict[int, IO[str]] = {}
_opened: dict[str, Optional[int]] = {}


def console_fd() -> Optional[int]:
    """The console's descriptor when a quiet CLI run published one and it is open in this process.

    A fold process started by multiprocessing's spawn inherits no descriptor: it opens the console's
    path (ARENA_PREF_CONSOLE_PATH, published next to the descriptor) once, here.
    """
    value = os.environ.get(CONSOLE_FD_ENV, "")
    if value.isdigit():
        try:
            os.fstat(int(value))
            return int(value)
        except OSError:
            pass
    path = os.environ.get(CONSOLE_PATH_ENV)
    if not path:
        return None
    if path not in _opened:
        try:
            _opened[path] = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError:  # no /proc (macOS), or the CLI is gone: bars go to stderr, the log
            _opened[path] = None
    return _opened[path]


def console_child_env() -> dict[str, Optional[str]]:
    """Environment changes for a child process that inherits no descriptors (multiprocessing spawn): no
    descriptor number, which in the child could name any other file (`None` means: remove the variable);
    the child reaches the console through ARENA_PREF_CONSOLE_PATH, inherited with the environment."""
    return {CONSOLE_FD_ENV: None}


class _CurrentStderr:
    """sys.stderr as it is at each write (the log file in a quiet run): where console lines are recorded."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def console_stream() -> Optional[IO[str]]:
    """A text stream on the console for progress bars, or None (then tqdm uses sys.stderr). Each finished line is
    also recorded in the log (pref_core.terminal.RecordingStream): the log says what the user saw."""
    fd = console_fd()
    if fd is None:
        return None
    if fd not in _streams:
        _streams[fd] = RecordingStream(os.fdopen(fd, "w", buffering=1, closefd=False), _CurrentStderr())
    return _streams[fd]


def console_is_quiet() -> bool:
    """True in a quiet CLI run: stdout/stderr are a log file and bars belong on the console stream."""
    return console_fd() is not None


def console_note(text: str) -> None:
    """One line on the console in a quiet run (elsewhere the caller's log line says the same)."""
    stream = console_stream()
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar on the console stream; on a non-terminal (a pipe, a test) it redraws at most every 5 s."""
    from tqdm.auto import tqdm

    stream = console_stream() or sys.stderr
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    kwargs.setdefault("mininterval", 0.5 if is_tty else 5.0)
    kwargs.setdefault("dynamic_ncols", is_tty)
    if not is_tty:
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, file=stream, **kwargs)


class FoldProgressCallback(TrainerCallback):
    """One bar per fold: optimizer steps, latest training loss, tokens per second and the ETA.

    Tokens per second come from the Trainer's non-padding token count (train.include_num_input_tokens_seen
    is set by build_training_arguments); the bar shows only this call's steps' rate when a fold resumes.
    """

    def __init__(self, description: str):
        self.description = description
        self.bar = None
        self._start = 0.0
        self._tokens_at_start = 0
        self._loss: Optional[float] = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.bar = progress_bar(total=state.max_steps, initial=state.global_step, desc=self.description, unit="step")
        self._start = time.monotonic()
        self._tokens_at_start = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        elapsed = max(time.monotonic() - self._start, 1e-9)
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens_at_start
        postfix = {}
        if self._loss is not None:
            postfix["loss"] = f"{self._loss:.4f}"
        if tokens > 0:
            postfix["tok/s"] = f"{tokens / elapsed:,.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("loss"), (int, float)):
            self._loss = float(logs["loss"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        self.close()

    def close(self) -> None:
        """End the bar's line; also when training stopped with an error (the Trainer then calls no on_train_end),
        so that the next console line starts on a line of its own."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
