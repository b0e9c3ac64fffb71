"""The user's terminal while a command's output goes to a log file: how it is reached, and what is recorded of it.

The CLI (arena_pref/console.py) points descriptors 1 and 2 at a log file for the whole command and keeps a
duplicate of the terminal, published as the descriptor ARENA_PREF_CONSOLE_FD and, for processes that inherit no
descriptor, its /proc path ARENA_PREF_CONSOLE_PATH (pref_core.progress opens it for fold processes' bars).
Everything written to the terminal goes through a `RecordingStream`, which also copies each finished line into the
log, prefixed with RECORD_PREFIX: the log then says exactly what the user saw, and a test can check that nothing
else reached the terminal.

Standard library only: the CLI imports it before anything heavy, and the Kaggle bundle copies it.
"""

from __future__ import annotations

import io
import threading
from typing import IO, Optional

CONSOLE_FD_ENV = "ARENA_PREF_CONSOLE_FD"
CONSOLE_PATH_ENV = "ARENA_PREF_CONSOLE_PATH"
# How a line the user saw on the terminal appears in the log file.
RECORD_PREFIX = "console| "


def visible_text(line: str) -> str:
    """What a terminal shows of one line written with carriage-return redraws (a progress bar): the text after
    the last carriage return, without trailing blanks.

    Example: ``visible_text("fold 0:  10%\\rfold 0: 100%  ")`` is ``"fold 0: 100%"``.
    """
    return line.rsplit("\r", 1)[-1].rstrip()


class RecordingStream(io.TextIOBase):
    """A text stream on the terminal that also writes each finished line, as the terminal shows it, to `record`
    (RECORD_PREFIX + visible_text(line)). Thread-safe: progress bars redraw from worker threads."""

    def __init__(self, target: IO[str], record: Optional[IO[str]]):
        super().__init__()
        self.target = target
        self.record = record
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            # Recorded first: a line the user has seen is already in the log (a Ctrl-C right after it was shown
            # interrupts nothing that the log would miss).
            if self.record is not None:
                *finished, self._pending = (self._pending + text).split("\n")
                for line in finished:
                    self.record.write(f"{RECORD_PREFIX}{visible_text(line)}\n")
                if finished:
                    self.record.flush()
            self.target.write(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.target.flush()
            if self.record is not None:
                self.record.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.target, "isatty", lambda: False)())

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # tqdm and rich ask
        return getattr(self.target, "encoding", None) or "utf-8"


def recorded_lines(log_text: str) -> list[str]:
    """The terminal lines a log file recorded (RecordingStream), in order."""
    return [line[len(RECORD_PREFIX) :] for line in log_text.splitlines() if line.startswith(RECORD_PREFIX)]
