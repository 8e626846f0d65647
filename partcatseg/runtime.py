"""Process-wide CPU runtime settings applied by the command-line tools.

**The allocator.** A PartCATSeg forward on a CPU allocates and frees about 1 GB of short-lived
tensors per image (per-class activations of 2-20 MB each).  glibc's default policy returns freed
memory to the kernel as soon as the top of its heap holds more than twice its (adaptive) mmap
threshold, and maps larger blocks afresh, so every forward page-faults its working memory back in
(~230 000 minor faults, ~0.9 GB of zeroed pages, per 384x512 image).  :func:`tune_allocator`
fixes glibc's mmap threshold at its maximum (32 MiB) and stops trimming (``mallopt``), so freed
blocks are reused instead -- what PyTorch's CPU performance guide achieves with jemalloc/tcmalloc;
on a 2-core Xeon inference gets 2.5-5% and a training step 13% faster.  The price is that a
process keeps the heap it has grown (reused, not returned to the system): the same peak for a plain
training step, ~13% more for one with activation checkpointing, which is why a job that asks for
checkpointing keeps glibc's policy (``prefer_memory``).

The tools call it once at start-up (``train_net.py`` through ``default_setup``, ``tools/demo.py``,
``tools/benchmark.py``'s phases, the web app); library code never changes it behind the caller's
back.  ``PARTCATSEG_MALLOC_TUNING=0`` keeps glibc's defaults, ``=1`` tunes even when memory is
preferred.  Nothing changes on other C libraries (musl, macOS, Windows) or when another allocator is
preloaded (``LD_PRELOAD`` of jemalloc/tcmalloc/mimalloc).
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
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # bytes: glibc's largest allowed value; bigger blocks are still mapped
_NO_TRIM = 2**31 - 1  # bytes (mallopt takes an int): the heap top is kept, not handed back to the kernel
_DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's initial values, restored by tune_allocator(False)
_DEFAULT_TRIM = 128 * 1024

_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")

#: what :func:`tune_allocator` reports when the policy is in effect
TUNED = "glibc: 32 MiB mmap threshold, no trim"

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


def tune_allocator(enable: Optional[bool] = None, *, prefer_memory: bool = False) -> str:
    """Apply the allocator policy above once per process; returns what is in effect.

    ``enable`` None follows ``PARTCATSEG_MALLOC_TUNING`` when it is set, else tunes unless
    ``prefer_memory`` (a training job with activation checkpointing); ``False`` restores glibc's
    defaults.  The answer is :data:`TUNED`, ``"glibc default (<why>)"``, ``"<name> (LD_PRELOAD)"``
    or ``"not glibc"``; the benchmark reports it with its timings.
    """
    global _state
    if _state is not None and enable is None:
        return _state
    reason = "asked for"
    if enable is None:
        env = os.environ.get(MALLOC_TUNING_ENV, "").strip().lower()
        if env and env not in _OFF + _ON:
            logger.warning("%s=%r is not a switch value (expected one of %s); ignoring it", MALLOC_TUNING_ENV,
                           os.environ[MALLOC_TUNING_ENV], ", ".join(_OFF + _ON))
            env = ""
        if env:
            enable = env in _ON
            reason = f"{MALLOC_TUNING_ENV}={env}"
        else:
            enable = not prefer_memory
            reason = "memory preferred: activation checkpointing"
    preloaded = _preloaded_allocator()
    libc = _glibc()
    if preloaded is not None:
        _state = f"{preloaded} (LD_PRELOAD)"
    elif libc is None:
        _state = "not glibc"
    elif not enable:
        if _state == TUNED:  # undo an earlier call (glibc's initial values; adaptation stays off)
            _mallopt(libc, _DEFAULT_MMAP_THRESHOLD, _DEFAULT_TRIM)
        _state = f"glibc default ({reason})"
    else:
        _state = TUNED if _mallopt(libc, _MMAP_THRESHOLD, _NO_TRIM) else "glibc default (mallopt refused)"
    logger.debug("allocator: %s", _state)
    return _state


def _mallopt(libc: ctypes.CDLL, mmap_threshold: int, trim_threshold: int) -> bool:
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok


def allocator_setting() -> str:
    """What :func:`tune_allocator` left in effect in this process (``"not tuned"`` before any call)."""
    return _state if _state is not None else "not tuned"
