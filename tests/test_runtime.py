"""The CPU allocator policy of the command-line tools (partcatseg.runtime)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from partcatseg import runtime

_LIBC = runtime._glibc()
glibc_only = pytest.mark.skipif(_LIBC is None or not hasattr(_LIBC, "mallinfo2"),
                                reason="needs Linux with glibc >= 2.33 (mallinfo2)")

# glibc's own account of where a 24 MiB block (a per-class activation's size) lives (mallinfo2):
# with the default policy in a fresh process it is mapped on its own (the adaptive mmap threshold starts
# at 128 KiB) and unmapped when freed, so every forward faults it in again; tuned, it comes from the
# heap (threshold 32 MiB) and stays there, free for the next forward, when freed (no trimming).
_CHILD = r"""
import ctypes, json
import torch
from partcatseg.runtime import tune_allocator
state = tune_allocator(prefer_memory=PREFER_MEMORY)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
mib = lambda n: n / 2**20
before = libc.mallinfo2()
x = torch.ones(6 * 2**20)
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(json.dumps({"state": state, "mapped": mib(during.hblkhd - before.hblkhd),
                  "free_in_heap_after": mib(after.fordblks)}))
"""


def _child(env_value: str | None, prefer_memory: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (runtime.MALLOC_TUNING_ENV, "LD_PRELOAD")}
    if env_value is not None:
        env[runtime.MALLOC_TUNING_ENV] = env_value
    out = subprocess.run([sys.executable, "-c", _CHILD.replace("PREFER_MEMORY", str(prefer_memory))], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_allocator_keeps_activation_sized_blocks_in_its_heap_for_reuse():
    tuned = _child(None)
    default = _child("0")
    memory_first = _child(None, prefer_memory=True)  # a training job with activation checkpointing
    forced = _child("1", prefer_memory=True)
    assert tuned["state"] == forced["state"] == runtime.TUNED
    assert default["state"] == f"glibc default ({runtime.MALLOC_TUNING_ENV}=0)"
    assert memory_first["state"] == "glibc default (memory preferred: activation checkpointing)"
    for glibc_policy in (default, memory_first):  # mapped on its own, returned to the kernel when freed
        assert glibc_policy["mapped"] >= 24 and glibc_policy["free_in_heap_after"] < 24, glibc_policy
    for tuned_policy in (tuned, forced):  # from the heap, kept there when freed
        assert tuned_policy["mapped"] < 1 and tuned_policy["free_in_heap_after"] >= 24, tuned_policy


def test_preloaded_allocator_and_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime, "_state", None)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    calls = []
    monkeypatch.setattr(runtime, "_mallopt", lambda *a: calls.append(a) or True)
    assert runtime.tune_allocator() == "jemalloc (LD_PRELOAD)"
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.tune_allocator(True) == "not glibc"
    assert calls == []
    assert runtime.allocator_setting() == "not glibc"


def test_the_setting_is_applied_once_and_reported(monkeypatch):
    monkeypatch.setattr(runtime, "_state", None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(runtime, "_glibc", lambda: object())
    calls = []
    monkeypatch.setattr(runtime, "_mallopt", lambda libc, mmap_max, trim: calls.append((mmap_max, trim)) or True)
    assert runtime.allocator_setting() == "not tuned"
    monkeypatch.setenv(runtime.MALLOC_TUNING_ENV, "1")
    assert runtime.tune_allocator() == runtime.TUNED
    assert runtime.tune_allocator() == runtime.TUNED  # once per process
    assert calls == [(runtime._MMAP_THRESHOLD, runtime._NO_TRIM)]
    assert runtime.tune_allocator(False) == "glibc default (asked for)"  # restores glibc's values
    assert calls[-1] == (runtime._DEFAULT_MMAP_THRESHOLD, runtime._DEFAULT_TRIM)


def test_an_unknown_switch_value_is_named_and_ignored(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "_state", None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(runtime, "_glibc", lambda: object())
    monkeypatch.setattr(runtime, "_mallopt", lambda *a: True)
    monkeypatch.setenv(runtime.MALLOC_TUNING_ENV, "maybe")
    with caplog.at_level("WARNING", logger="partcatseg.runtime"):
        assert runtime.tune_allocator(prefer_memory=True) == "glibc default (memory preferred: activation checkpointing)"
    (record,) = [r for r in caplog.records if r.name == "partcatseg.runtime"]
    assert record.getMessage() == ("PARTCATSEG_MALLOC_TUNING='maybe' is not a switch value (expected one of "
                                   "0, false, no, off, 1, true, yes, on); ignoring it")
