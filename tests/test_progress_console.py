"""A fold process that inherits no descriptor (multiprocessing spawn) still draws on the quiet CLI's console."""

from __future__ import annotations

import multiprocessing
import os
import sys

import pytest

from pref_core import progress

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the console path is under /proc")


def _child_note(env: dict) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    progress.console_note("fold 0: step 3/10")


def test_spawned_child_reaches_the_console_by_path(monkeypatch):
    read_end, write_end = os.pipe()
    try:
        # What the quiet CLI publishes (arena_pref.console.quiet_run).
        monkeypatch.setenv(progress.CONSOLE_FD_ENV, str(write_end))
        monkeypatch.setenv(progress.CONSOLE_PATH_ENV, f"/proc/{os.getpid()}/fd/{write_end}")
        env = progress.console_child_env()
        assert env == {progress.CONSOLE_FD_ENV: None}  # a number would name another file in the child
        child = multiprocessing.get_context("spawn").Process(target=_child_note, args=(env,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 1000).decode() == "fold 0: step 3/10\n"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_an_unreachable_console_path_means_no_console(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.CONSOLE_FD_ENV, raising=False)
    monkeypatch.setenv(progress.CONSOLE_PATH_ENV, str(tmp_path / "gone" / "fd"))
    assert progress.console_fd() is None
    assert not progress.console_is_quiet()
