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
from typing import Iterator, Optional

from pref_core.errors import UserError


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


def _nearest_existing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_folder_problem(folder: Path) -> Optional[str]:
    """Why nothing can be created in `folder` or below it (None: it can). Tried with a real file, which is
    removed at once: permission bits do not tell (root, read-only file systems, /proc)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
    except OSError as err:
        return f"cannot write in {existing}: {(err.strerror or str(err)).lower()}"
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_file(dest: Path, option: str) -> Path:
    """Before any work: `dest` can be published as a file (`publishing_file`): it is not a folder and its folder is
    writable, or can be created (nothing is created here). Raises UserError, one line naming `option`."""
    dest = Path(dest)
    if dest.is_dir():
        raise UserError(f"{option} {dest}: is a folder; give a file path, e.g. {option} {dest / 'submission.csv'}")
    problem = _writable_folder_problem(dest.parent)
    if problem:
        raise UserError(f"{option} {dest}: {problem}; choose a writable place")
    return dest


def check_new_folder(target: Path, option: str) -> Path:
    """Before any work: `target` is a folder to be published whole (`publishing_dir`): absent or empty, in a
    writable place. Raises UserError, one line naming `option`."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        kind = "a folder that is not empty" if target.is_dir() else "a file"
        raise UserError(f"{option} {target}: is {kind}; choose a new folder or remove it")
    problem = _writable_folder_problem(target.parent)
    if problem:
        raise UserError(f"{option} {target}: {problem}; choose a writable place")
    return target


@contextlib.contextmanager
def publishing_new_dir(target: Path, option: str, prefix: str = ".building-") -> Iterator[Path]:
    """`publishing_dir` for a folder that must be new: when the block ends, the staging folder becomes `target`
    only if `target` is still absent or empty; a `target` that another process filled meanwhile is kept and this
    build is refused (UserError naming `option`), never merged or replaced."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        yield staging
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        try:
            os.rename(staging, target)  # fails when target is a non-empty folder or a file
        except OSError:
            raise UserError(
                f"{option} {target}: written by another process meanwhile; kept as it is, this copy was discarded"
            ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def exclusive_target(target: Path, option: str) -> Iterator[None]:
    """Hold `target` for this process while the block runs: a second process asking for the same path (two exports
    to one --out) is refused at once (UserError naming `option` and the holder's pid). The lock is a file in the
    temporary folder named after the target's absolute path, so nothing is created beside the target; a lock left
    by a process that died is taken over."""
    import hashlib

    resolved = str(Path(target).expanduser().absolute())
    lock = Path(tempfile.gettempdir()) / f"arena-pref-{hashlib.sha256(resolved.encode()).hexdigest()[:16]}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
                os.kill(holder, 0)
            except (OSError, ValueError):  # gone, or half-written: a stale lock
                lock.unlink(missing_ok=True)
                continue
            raise UserError(
                f"{option} {target}: another process (pid {holder}) is writing it now; wait for it to finish or "
                "choose another path"
            ) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    else:
        raise UserError(f"{option} {target}: cannot take its lock {lock}; remove that file if no export runs")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
