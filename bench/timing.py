"""Wall-clock timing and ratios of repeated measurements."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def time_call(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes (perf_counter)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """min..max of the repeats, for the tables (how noisy a median is)."""
    return f"{min(values):.3g}..{max(values):.3g}" if values else "-"


def cpu_seconds_with_children() -> float:
    """CPU seconds (user + system) used so far by this process, its finished children and its live
    descendants (e.g. a Prefect server subprocess, fold processes)."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.Error:  # exited meanwhile: counted with the finished children once waited for
            pass
    return total


def read_run_queue_wait_s() -> float:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux schedstat, field 2).

    On a shared machine this is the time other processes took from us. For a single-threaded workload,
    wall time less this wait is what the same work takes on an idle machine; it moves far less between
    runs than the wall time does. NaN where the kernel does not report it.
    """
    try:
        with open("/proc/thread-self/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


def time_call_detailed(fn: Callable[[], object]) -> dict[str, float]:
    """{"wall", "cpu", "wait", "busy"} seconds of one call of `fn`: wall clock, this process's CPU time,
    this thread's run-queue wait, and wall less that wait (the contention-corrected wall time)."""
    wait = read_run_queue_wait_s()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    out = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "wait": read_run_queue_wait_s() - wait}
    out["busy"] = out["wall"] - out["wait"] if out["wait"] == out["wait"] else out["wall"]
    return out
