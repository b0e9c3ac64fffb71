"""A full disk while a fold writes (a checkpoint, its adapter, predictions): one line that names the folder, what
is free and how much the write needs, instead of torch's "unexpected pos 11200 vs 11088" traceback.

A full disk shows up as OSError(ENOSPC) from Python's own writes, and as a RuntimeError from torch's zip writer
("file write failed", "unexpected pos N vs M") when `torch.save` writes the optimizer state; the latter only counts
as a full disk when the folder's free space is below what a checkpoint needs.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Optional

from pref_core.errors import UserError

# What torch's PytorchStreamWriter says when a write comes up short (caffe2/serialize/inline_container.cc).
TORCH_WRITE_FAILURES = ("file write failed", "unexpected pos")
_FULL = (errno.ENOSPC, errno.EDQUOT)
# Bytes a trainable parameter takes in a checkpoint: fp32 weight plus AdamW's two fp32 moments.
BYTES_PER_TRAINABLE_PARAMETER = 12


class FoldDiskFullError(UserError, RuntimeError):
    """The disk that holds a fold's folder filled up while the fold wrote to it; the message is one line."""


def free_bytes(folder: Path) -> int:
    """Free space on the disk holding `folder` (its nearest existing parent when it does not exist yet)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def checkpoint_bytes(complete_checkpoint: Optional[Path], trainable_parameters: int) -> int:
    """About what one checkpoint takes: the size of a complete one when there is one, else the trainable
    parameters' weights and optimizer state."""
    if complete_checkpoint is not None and complete_checkpoint.is_dir():
        return folder_bytes(complete_checkpoint)
    return trainable_parameters * BYTES_PER_TRAINABLE_PARAMETER


def is_disk_full(error: BaseException, folder: Path, needed_bytes: int) -> bool:
    """Whether `error` (or an error it was raised from) is a full disk: ENOSPC/EDQUOT, or torch's short write while
    `folder`'s disk has less free space than `needed_bytes`."""
    seen: Optional[BaseException] = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return True
        if isinstance(seen, RuntimeError) and any(text in str(seen) for text in TORCH_WRITE_FAILURES):
            return free_bytes(folder) < needed_bytes
        seen = seen.__cause__ or seen.__context__
    return False


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def describe_disk_full(folder: Path, writing: str, needed_bytes: int) -> str:
    """The one line: where, what was being written, what is free, what to free, and that the rerun resumes."""
    return (
        f"no space left on the disk of {folder} while writing {writing} ({format_bytes(free_bytes(folder))} free "
        f"now): a checkpoint needs about {format_bytes(needed_bytes)} free there; make room (or point output_dir / "
        "ARENA_PREF_OUTPUT_DIR at a larger disk), then rerun the same command: it resumes from the last complete "
        "checkpoint"
    )
