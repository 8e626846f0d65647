"""Timing and memory measurement for the benchmark: medians with quartiles, section peak RSS, CUDA peaks."""
from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

__all__ = ["summarize", "peak_rss_mb", "reset_peak_rss", "release_free_memory", "current_rss_mb", "sync", "timed",
           "Memory"]


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles, min, max and the raw samples (seconds)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize() needs at least one sample")
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0], xs[0], xs[0])
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs),
            "samples": [float(x) for x in samples]}


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since the last :func:`reset_peak_rss` (else since the start).

    Linux's ``VmHWM`` (resettable through ``/proc/self/clear_refs``); elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Restart the peak-RSS measurement at the current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that a following section's
    peak RSS counts its own allocations instead of re-using pages an earlier section freed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def current_rss_mb() -> float:
    """This process's current resident set size in MiB (0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError):
        return 0.0


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


class Memory:
    """Peak memory of the work that follows: CPU resident set (before, peak, peak - before) and CUDA.

    The peak restarts at construction where Linux allows it, so it belongs to this section only
    (``peak_is_section`` False: it is the process's lifetime peak).
    """

    def __init__(self, device: str) -> None:
        import gc

        import torch

        gc.collect()
        release_free_memory()
        self.device = device
        self.section = reset_peak_rss()
        self.rss_before_mb = current_rss_mb()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def report(self) -> dict[str, Any]:
        import torch

        peak = peak_rss_mb()
        out = {"rss_before_mb": round(self.rss_before_mb, 1), "peak_rss_mb": round(peak, 1),
               "peak_increase_mb": round(peak - self.rss_before_mb, 1), "peak_is_section": self.section}
        if self.device.startswith("cuda"):
            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out
