"""Peak resident memory of this process, resettable (Linux), for allocations tracemalloc cannot see.

torch's CPU tensors come from its own allocator (posix_memalign, no caching on CPU), invisible to
tracemalloc. The kernel's high-water mark of resident pages (VmHWM) sees them. Writing "5" to
/proc/self/clear_refs resets that mark to the current resident size, so "peak after reset minus
resident at reset" is the most extra memory a piece of code touched. Large tensors are mmap-ed
and returned to the kernel when freed, so the measurement repeats cleanly within one process.
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def read_rss_kib() -> dict[str, int]:
    """{"rss": current resident KiB, "peak": high-water mark KiB} from /proc/self/status."""
    out = {}
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            out["peak"] = int(line.split()[1])
    return out


def reset_peak_rss() -> int:
    """Reset the high-water mark to the current resident size; returns that size in KiB."""
    _CLEAR_REFS.write_text("5")
    return read_rss_kib()["rss"]


class PeakRSS:
    """`with PeakRSS() as meter: ...` then `meter.peak_mib`: most extra resident memory inside the block."""

    def __enter__(self) -> "PeakRSS":
        self.start_kib = reset_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        self.peak_kib = read_rss_kib()["peak"]

    @property
    def peak_mib(self) -> float:
        return max(0, self.peak_kib - self.start_kib) / 1024.0


def is_supported() -> bool:
    return _STATUS.is_file() and _CLEAR_REFS.exists()


def profile_peak_allocated_mib(fn) -> float:
    """Most bytes held at once by tensors that `fn` allocates on the CPU, from torch.profiler's
    allocation events (tensors alive before the call do not count), in MiB.

    Sees every allocation, however small, where the resident-memory mark only sees pages newly
    touched (a step whose small tensors fit in heap pages freed earlier shows no RSS growth).
    Walks the profiler's event tree, a torch-internal API: raises RuntimeError if it moves.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        from torch._C._profiler import _EventType

        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (ImportError, AttributeError) as err:
        raise RuntimeError(
            f"torch.profiler's event tree API changed ({err}); use the resident-memory peak only"
        ) from err
    events = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and str(node.extra_fields.device).startswith("cpu"):
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))  # size < 0: a free
        stack.extend(node.children)
    held = peak = 0
    for _, size in sorted(events):
        held += size
        peak = max(peak, held)
    return peak / 2**20
