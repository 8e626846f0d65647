"""The CPU allocator policy of the command-line tools (partcatseg.runtime)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from partcatseg import runtime

glibc_only = pytest.mark.skipif(runtime._glibc() is None, reason="needs Linux with glibc")

# A forward's pattern in small: three 24 MiB tensors (below the tuned 32 MiB mmap threshold) allocated,
# written and freed again and again. With glibc's defaults the freed 72 MiB at the heap top exceed its
# trim threshold and go back to the kernel, so each repeat faults them in again; tuned, they are reused.
# Prints the minor page faults of 5 repeats once the heap has settled.
_CHILD = r"""
import json, resource
import torch
from partcatseg.runtime import tune_allocator
state = tune_allocator(prefer_memory={prefer_memory})
def once():
    blocks = [torch.ones(6 * 2**20) for _ in range(3)]
    del blocks
for _ in range(15):
    once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    once()
print(json.dumps({{"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""


def _child(env_value: str | None, prefer_memory: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (runtime.MALLOC_TUNING_ENV, "LD_PRELOAD")}
    if env_value is not None:
        env[runtime.MALLOC_TUNING_ENV] = env_value
    out = subprocess.run([sys.executable, "-c", _CHILD.format(prefer_memory=prefer_memory)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_allocator_reuses_freed_memory_instead_of_faulting_it_back_in():
    tuned = _child(None)
    default = _child("0")
    memory_first = _child(None, prefer_memory=True)  # a training job with activation checkpointing
    forced = _child("1", prefer_memory=True)
    assert tuned["state"] == forced["state"] == runtime.TUNED
    assert default["state"] == f"glibc default ({runtime.MALLOC_TUNING_ENV}=0)"
    assert memory_first["state"] == "glibc default (memory preferred: activation checkpointing)"
    pages = 5 * 72 * 2**20 // 4096  # the default policy faults the 72 MiB in again at every repeat
    assert default["faults"] > pages // 2
    assert memory_first["faults"] > pages // 2
    assert tuned["faults"] < pages // 50
    assert forced["faults"] < pages // 50


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
