"""Process-group helpers shared by the trainer, the hooks and the evaluators.

Every function works unchanged in a single process (no ``torch.distributed`` group initialised):
the world is then one rank, gathers return ``[obj]`` and barriers are no-ops, so callers never
need to branch on "am I distributed?".

Object collectives (``all_gather``, ``gather``) run on a gloo group even when training uses NCCL,
as detectron2 does: pickled Python objects live on the CPU, and this keeps them off GPU memory.
That group gets the job's collective timeout (``--dist-timeout``); a collective of this module that
times out raises :class:`CollectiveTimeoutError`, which says so in plain words.
"""
from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "CollectiveTimeoutError",
    "all_gather",
    "any_rank",
    "get_collective_timeout",
    "is_timeout_error",
    "set_collective_timeout",
    "gather",
    "get_local_rank",
    "set_local_rank",
    "reset_local_rank",
    "get_rank",
    "get_world_size",
    "is_dist_initialized",
    "is_main_process",
    "reduce_dict",
    "shared_random_seed",
    "synchronize",
]

# Set by launch() for spawned workers (and for torchrun from its environment variables).
_LOCAL_RANK: Optional[int] = None
# The timeout the process group was created with (set by launch(); None = torch's default).
_TIMEOUT: Optional[timedelta] = None


class CollectiveTimeoutError(RuntimeError):
    """A collective waited longer than the collective timeout for another rank."""


def set_collective_timeout(timeout: Optional[timedelta]) -> None:
    """Record the process group's timeout (called by :func:`~partcatseg.engine.launch.launch`)."""
    global _TIMEOUT
    _TIMEOUT = timeout


def get_collective_timeout() -> Optional[timedelta]:
    return _TIMEOUT


def is_timeout_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that timed out (gloo: "Timed out waiting ...", NCCL watchdog)."""
    if isinstance(exc, CollectiveTimeoutError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    if "Timed out waiting" in text or "Application timeout caused pair closure" in text:  # gloo
        return True
    backend_error = getattr(dist, "DistBackendError", None)  # NCCL's watchdog
    return backend_error is not None and isinstance(exc, backend_error) and "timeout" in text.lower()


def _timeout_text() -> str:
    return f"{_TIMEOUT.total_seconds():g} s" if _TIMEOUT is not None else "the default timeout"


def _collective(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RuntimeError as exc:
        if not is_timeout_error(exc) or isinstance(exc, CollectiveTimeoutError):
            raise
        raise CollectiveTimeoutError(
            f"{name} on rank {get_rank()} of {get_world_size()} waited more than {_timeout_text()} (--dist-timeout / "
            f"DIST_TIMEOUT) for the other ranks: a rank stopped responding (frozen, dead or stuck; its "
            f"OUTPUT_DIR/heartbeats file and log.txt.rank<N> show where it was). Original error: {exc}"
        ) from exc


def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_initialized() else 0


def set_local_rank(local_rank: int) -> None:
    """Record this process's rank on its machine (called by :func:`~partcatseg.engine.launch.launch`)."""
    global _LOCAL_RANK
    _LOCAL_RANK = int(local_rank)


def reset_local_rank() -> None:
    global _LOCAL_RANK, _TIMEOUT
    _LOCAL_RANK = None
    _TIMEOUT = None
    _object_group.cache_clear()


def get_local_rank() -> int:
    """Rank within the machine: the GPU index this process drives."""
    if not is_dist_initialized():
        return 0
    if _LOCAL_RANK is not None:
        return _LOCAL_RANK
    return int(os.environ.get("LOCAL_RANK", get_rank()))


def is_main_process() -> bool:
    return get_rank() == 0


def _uses_nccl() -> bool:
    return is_dist_initialized() and dist.get_backend() == "nccl"


def _tensor_device() -> torch.device:
    """The device tensors must live on for the default group's collectives."""
    if _uses_nccl():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize() -> None:
    """Barrier across all ranks (no-op in a single process)."""
    if get_world_size() == 1:
        return
    if _uses_nccl():
        _collective("barrier", lambda: dist.barrier(device_ids=[torch.cuda.current_device()]))
    else:
        _collective("barrier", dist.barrier)


@functools.lru_cache(maxsize=None)
def _object_group() -> Any:
    """A gloo group for pickled-object collectives (created once, collectively, on first use)."""
    if _uses_nccl():
        return dist.new_group(backend="gloo", **({"timeout": _TIMEOUT} if _TIMEOUT is not None else {}))
    return dist.group.WORLD


def all_gather(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: List[Any] = [None] * world
    _collective("all_gather", lambda: dist.all_gather_object(out, obj, group=_object_group()))
    return out


def gather(obj: Any, dst: int = 0) -> List[Any]:
    """Every rank's ``obj`` in rank order on rank ``dst``; ``[]`` on the other ranks."""
    world = get_world_size()
    if world == 1:
        return [obj]
    if get_rank() == dst:
        out: List[Any] = [None] * world
        _collective("gather", lambda: dist.gather_object(obj, out, dst=dst, group=_object_group()))
        return out
    _collective("gather", lambda: dist.gather_object(obj, None, dst=dst, group=_object_group()))
    return []


def reduce_dict(input_dict: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """Sum (or mean, if ``average``) of scalar tensors across ranks, returned on every rank.

    Keys are reduced in sorted order so that all ranks pair up the same values; every rank must
    pass the same keys.
    """
    world = get_world_size()
    if world == 1:
        return dict(input_dict)
    names = sorted(input_dict)
    for name in names:
        if input_dict[name].numel() != 1:
            raise ValueError(f"reduce_dict: {name!r} has shape {tuple(input_dict[name].shape)}, expected a scalar")
    device = _tensor_device()
    values = torch.stack([input_dict[k].detach().reshape(()).to(device, torch.float64) for k in names])
    _collective("all_reduce", lambda: dist.all_reduce(values))
    if average:
        values /= world
    return {k: v.to(input_dict[k].dtype) for k, v in zip(names, values)}


def any_rank(flag: Any) -> bool:
    """Whether ``flag`` (a bool or a 0-dim bool/number tensor, on any device) is true on some rank.

    One scalar all-reduce; a tensor flag is reduced where it lives (no host sync before the reduce).
    """
    if get_world_size() == 1:
        return bool(flag.item()) if isinstance(flag, torch.Tensor) else bool(flag)
    device = _tensor_device()
    value = (flag.detach().reshape(()).to(device, torch.float32) if isinstance(flag, torch.Tensor)
             else torch.tensor(float(bool(flag)), device=device))
    _collective("all_reduce", lambda: dist.all_reduce(value, op=dist.ReduceOp.MAX))
    return bool(value.item() > 0)


def shared_random_seed() -> int:
    """A random int drawn on rank 0 and shared by all ranks (e.g. for an infinite sampler)."""
    seed = int(np.random.randint(2**31))
    return all_gather(seed)[0]
