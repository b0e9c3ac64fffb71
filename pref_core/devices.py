"""Which local devices fold processes run on: one slot per visible CUDA device, or CPU slots.

A slot is what one fold process may use: a CUDA device id (``"0"``, ``"3"``), given to the process as
``CUDA_VISIBLE_DEVICES`` so that it sees exactly that GPU as ``cuda:0``, or ``"cpu:<i>"`` on a machine
without GPUs (the processes then share the CPU; the slot only names them). The orchestration layer
decides when a fold starts (a task runner with as many workers as slots); `DeviceSlots` only says
which slot is free, so that a fold starting on a freed worker also gets the device that was freed.
"""

from __future__ import annotations

import contextlib
import os
import queue
from typing import Iterator, Optional, Sequence

# Set in every fold process: the slot it was given (recorded on its MLflow run).
DEVICE_SLOT_ENV = "ARENA_PREF_DEVICE_SLOT"
CPU_SLOT_PREFIX = "cpu:"


def visible_cuda_devices() -> list[str]:
    """CUDA device ids this process may hand out, as CUDA_VISIBLE_DEVICES would name them.

    An explicit CUDA_VISIBLE_DEVICES is taken as it is ("" means none), so a user who pins a run to
    GPUs 2,3 keeps folds on those two. Otherwise all devices torch counts (no CUDA context is created).
    """
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [d.strip() for d in pinned.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_device_slots(max_parallel: Optional[int], cuda_devices: Optional[Sequence[str]] = None) -> list[str]:
    """The slots for cv.max_parallel: one per visible CUDA device by default, else CPU slots.

    Example: 4 visible GPUs and max_parallel=None -> ["0", "1", "2", "3"]; max_parallel=2 -> ["0", "1"];
    no GPU and max_parallel=None -> ["cpu:0"]; no GPU and max_parallel=2 -> ["cpu:0", "cpu:1"].
    Raises ValueError when more parallel folds are asked for than there are GPUs to pin them to.
    """
    devices = list(visible_cuda_devices() if cuda_devices is None else cuda_devices)
    if not devices:
        return [f"{CPU_SLOT_PREFIX}{i}" for i in range(max_parallel or 1)]
    wanted = len(devices) if max_parallel is None else max_parallel
    if wanted > len(devices):
        raise ValueError(
            f"cv.max_parallel={wanted} but only {len(devices)} CUDA device(s) are visible "
            f"({','.join(devices)}); each fold process needs a GPU of its own: set cv.max_parallel to at most "
            f"{len(devices)} (or leave it unset)"
        )
    return devices[:wanted]


def slot_environment(slot: str) -> dict[str, str]:
    """Environment of a fold process given `slot`: its GPU as the only visible one, and the slot's name."""
    env = {DEVICE_SLOT_ENV: slot}
    if not slot.startswith(CPU_SLOT_PREFIX):
        env["CUDA_VISIBLE_DEVICES"] = slot
    return env


class DeviceSlots:
    """Free slots, shared by the threads that launch fold processes; `take` blocks until one is free."""

    def __init__(self, slots: Sequence[str]):
        if not slots:
            raise ValueError("DeviceSlots needs at least one slot")
        self.slots = list(slots)
        self._free: "queue.Queue[str]" = queue.Queue()
        for slot in self.slots:
            self._free.put(slot)

    def __len__(self) -> int:
        return len(self.slots)

    @contextlib.contextmanager
    def take(self) -> Iterator[str]:
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)
