"""Build a file or folder beside its final place, then move it there in one rename.

Readers never see half a cache, model or export: the staging path sits in the
target's own folder (so the rename stays on one filesystem and is atomic), and a
failed build leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def publishing_dir(target: Path, prefix: str = ".building-") -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error, it becomes `target`.

    When `target` appeared meanwhile (another process published the same content first), that copy
    is kept and ours is discarded. An empty `target` folder is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        yield staging
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        try:
            os.rename(staging, target)
        except OSError:  # a non-empty target: the concurrent build that won
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def publishing_file(dest: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a staging file path beside `dest`; when the block ends without error, it replaces `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(staging)
        os.replace(staging, dest)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
