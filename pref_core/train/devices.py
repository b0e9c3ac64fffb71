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


def plan_device_slots(
    max_parallel: Optional[int], devices_per_fold: int = 1, cuda_devices: Optional[Sequence[str]] = None
) -> list[str]:
    """The slots for cv.max_parallel folds of train.num_processes devices each.

    GPUs are grouped in consecutive runs of `devices_per_fold`; by default as many folds run as there
    are whole groups. Example with 8 visible GPUs: (None, 1) -> ["0", ..., "7"]; (None, 2) ->
    ["0,1", "2,3", "4,5", "6,7"]; (2, 2) -> ["0,1", "2,3"]. Without GPUs: (None, k) -> ["cpu:0"],
    (2, k) -> ["cpu:0", "cpu:1"] (processes share the CPU). Raises ValueError, naming the fix, when
    the GPUs cannot give every parallel fold its own devices.
    """
    devices = list(visible_cuda_devices() if cuda_devices is None else cuda_devices)
    if not devices:
        return [f"{CPU_SLOT_PREFIX}{i}" for i in range(max_parallel or 1)]
    groups = [
        devices[i : i + devices_per_fold] for i in range(0, len(devices) - devices_per_fold + 1, devices_per_fold)
    ]
    if not groups:
        raise ValueError(
            f"train.num_processes={devices_per_fold} but only {len(devices)} CUDA device(s) are visible "
            f"({','.join(devices)}); set train.num_processes to at most {len(devices)}"
        )
    wanted = len(groups) if max_parallel is None else max_parallel
    if wanted > len(groups):
        raise ValueError(
            f"cv.max_parallel={wanted} with train.num_processes={devices_per_fold} needs {wanted * devices_per_fold} "
            f"GPUs, but only {len(devices)} CUDA device(s) are visible ({','.join(devices)}); each fold process "
            f"needs GPUs of its own: set cv.max_parallel to at most {len(groups)} (or leave it unset)"
        )
    return [",".join(group) for group in groups[:wanted]]


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
