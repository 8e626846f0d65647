"""Process-wide CPU runtime settings applied by the command-line tools.

**The allocator.** A PartCATSeg forward on a CPU allocates and frees about 1 GB of short-lived
tensors per image (per-class activations of 2-20 MB each).  With glibc's default policy, blocks of
that size are taken from fresh ``mmap`` pages and returned to the kernel when freed, so every
forward page-faults its working memory back in (~230 000 minor faults, ~0.9 GB of zeroed pages, per
384x512 image: about 5% of the fp32 inference time on a 2-core Xeon).  :func:`tune_allocator` asks glibc to serve
every block from its heap and keep freed memory for reuse (``mallopt``: no ``mmap`` blocks, no
trimming), which is what PyTorch's CPU performance guide achieves with jemalloc/tcmalloc.  The price
is that the process keeps its peak heap (freed memory is reused, not returned to the system).

The tools call it once at start-up (``train_net.py``, ``tools/demo.py``, ``tools/benchmark.py``'s
phases, the web app); library code never changes it behind the caller's back.  Set
``PARTCATSEG_MALLOC_TUNING=0`` to keep glibc's defaults.  Nothing changes on other C libraries
(musl, macOS, Windows) or when another allocator is preloaded (``LD_PRELOAD`` of jemalloc/tcmalloc).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Optional

__all__ = ["MALLOC_TUNING_ENV", "TUNED", "tune_allocator", "allocator_setting"]

logger = logging.getLogger(__name__)

#: environment variable: ``0`` keeps glibc's default allocation policy
MALLOC_TUNING_ENV = "PARTCATSEG_MALLOC_TUNING"

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NO_TRIM = 2**31 - 1  # bytes (mallopt takes an int): the heap top is kept, not handed back to the kernel
_DEFAULT_MMAP_MAX = 65536  # glibc's defaults, restored by tune_allocator(False)
_DEFAULT_TRIM = 128 * 1024

#: what :func:`tune_allocator` reports when the policy is in effect
TUNED = "glibc: heap only, no trim"

_state: Optional[str] = None


def _glibc() -> Optional[ctypes.CDLL]:
    """The process's C library if it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return None
    return libc


def _preloaded_allocator() -> Optional[str]:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
    return None


def tune_allocator(enable: Optional[bool] = None) -> str:
    """Apply the allocator policy above once per process; returns what is in effect.

    ``enable`` None follows ``PARTCATSEG_MALLOC_TUNING`` (default on); ``False`` restores glibc's
    defaults.  The answer is one of :data:`TUNED`, ``"glibc default (PARTCATSEG_MALLOC_TUNING=0)"``,
    ``"<name> (LD_PRELOAD)"`` or ``"not glibc"``; the benchmark reports it with its timings.
    """
    global _state
    if _state is not None and enable is None:
        return _state
    if enable is None:
        enable = os.environ.get(MALLOC_TUNING_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    preloaded = _preloaded_allocator()
    libc = _glibc()
    if preloaded is not None:
        _state = f"{preloaded} (LD_PRELOAD)"
    elif libc is None:
        _state = "not glibc"
    elif not enable:
        if _state == TUNED:  # undo an earlier call (glibc's static defaults)
            _mallopt(libc, _DEFAULT_MMAP_MAX, _DEFAULT_TRIM)
        _state = f"glibc default ({MALLOC_TUNING_ENV}=0)"
    else:
        _state = TUNED if _mallopt(libc, 0, _NO_TRIM) else "glibc default (mallopt refused)"
    logger.debug("allocator: %s", _state)
    return _state


def _mallopt(libc: ctypes.CDLL, mmap_max: int, trim_threshold: int) -> bool:
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = libc.mallopt(_M_MMAP_MAX, mmap_max) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok


def allocator_setting() -> str:
    """What :func:`tune_allocator` left in effect in this process (``"not tuned"`` before any call)."""
    return _state if _state is not None else "not tuned"
