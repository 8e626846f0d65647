"""Start one training process per GPU, detectron2-style, or join a torchrun job.

Three ways in:

* ``--num-gpus 1`` (world size 1): ``main_func`` runs in this process, no process group.
* ``--num-gpus N`` (N > 1): N workers are spawned (``torch.multiprocessing``), each joins a group
  with ``init_method=dist_url``. Backend: NCCL when CUDA is available, gloo otherwise, so
  ``--num-gpus 2`` on a CPU-only machine runs 2 gloo CPU processes — real DDP without GPUs,
  which is how the tests exercise distributed training. ``dist_url="auto"`` picks a free port on
  127.0.0.1 (single machine only).
* Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment): nothing is
  spawned; this process joins with ``env://`` and ``--num-gpus``/``--dist-url`` are ignored.

SIGINT/SIGTERM sent to the launching process are forwarded to spawned workers, so the trainer in
each worker can save a checkpoint and stop cleanly (see :mod:`partcatseg.engine.signals`).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from datetime import timedelta
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import comm

__all__ = ["DEFAULT_TIMEOUT", "launch", "torchrun_env"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


class TorchrunEnv(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def torchrun_env() -> Optional[TorchrunEnv]:
    """The rendezvous variables torchrun exports, or ``None`` when not launched by torchrun."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(k in os.environ for k in keys):
        return None
    try:
        rank, world, local = (int(os.environ[k]) for k in keys)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError as exc:
        raise ValueError(
            "torchrun environment variables must be integers: "
            + ", ".join(f"{k}={os.environ.get(k)!r}" for k in keys + ("LOCAL_WORLD_SIZE",))
        ) from exc
    return TorchrunEnv(rank, world, local, local_world)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _init_group(backend: str, init_method: str, world_size: int, rank: int, local_rank: int,
                local_size: int, timeout: timedelta) -> None:
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} needs GPU {local_rank}, but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible; lower --num-gpus or set CUDA_VISIBLE_DEVICES"
            )
        torch.cuda.set_device(local_rank)
    elif torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        # gloo with CUDA present: still pin each process to its own GPU for the model
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size, rank=rank,
                            timeout=timeout)
    comm.set_local_rank(local_rank)
    comm.synchronize()


def _teardown() -> None:
    comm.reset_local_rank()
    if dist.is_initialized():
        dist.destroy_process_group()


def _distributed_worker(local_rank: int, main_func: Callable[..., Any], world_size: int, num_gpus_per_machine: int,
                        machine_rank: int, dist_url: str, args: Sequence[Any], timeout: timedelta,
                        backend: str) -> None:
    rank = machine_rank * num_gpus_per_machine + local_rank
    _init_group(backend, dist_url, world_size, rank, local_rank, num_gpus_per_machine, timeout)
    try:
        main_func(*args)
    finally:
        _teardown()


class _ForwardSignals:
    """In the launcher: pass SIGINT/SIGTERM on to the spawned workers instead of dying."""

    def __init__(self, processes: Sequence[Any]):
        self.processes = processes
        self.previous: dict = {}

    def _forward(self, signum: int, _frame: Any) -> None:
        logger.warning("launcher received %s; forwarding it to %d worker(s)",
                       signal.Signals(signum).name, len(self.processes))
        for p in self.processes:
            if p.is_alive() and p.pid is not None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> "_ForwardSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = "auto",
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: Optional[str] = None,
) -> Any:
    """Run ``main_func(*args)`` on every process of the job.

    Args:
        main_func: picklable (module-level) function; in spawned workers it runs after the process
            group is up, so it can use :mod:`partcatseg.engine.comm`.
        num_gpus_per_machine: processes per machine (one per GPU; on CPU, one per gloo worker).
        num_machines, machine_rank: multi-machine jobs (each machine runs ``launch`` itself).
        dist_url: rendezvous URL, e.g. ``tcp://host:port``; ``"auto"`` = a free local port
            (single machine only).
        backend: ``None`` = NCCL if CUDA is available else gloo; or "gloo"/"nccl" explicitly.

    Returns:
        ``main_func``'s return value when it runs in this process (world size 1, or torchrun);
        ``None`` after spawned workers finish. A worker's exception is re-raised here.
    """
    env = torchrun_env()
    if env is not None and env.world_size == 1:
        return main_func(*args)  # torchrun with a single process: nothing to join
    if env is not None:
        backend = backend or _default_backend()
        if num_gpus_per_machine not in (1, env.local_world_size):
            logger.warning("launched by torchrun: ignoring --num-gpus %d (torchrun started %d process(es) "
                           "on this machine)", num_gpus_per_machine, env.local_world_size)
        _init_group(backend, "env://", env.world_size, env.rank, env.local_rank, env.local_world_size, timeout)
        try:
            return main_func(*args)
        finally:
            _teardown()

    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(f"launch: num_gpus_per_machine={num_gpus_per_machine} and num_machines={num_machines} "
                         "must both be >= 1")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"launch: machine_rank={machine_rank} is outside [0, num_machines={num_machines})")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)

    backend = backend or _default_backend()
    if backend == "nccl" and torch.cuda.device_count() < num_gpus_per_machine:
        raise RuntimeError(
            f"--num-gpus {num_gpus_per_machine} with NCCL, but only {torch.cuda.device_count()} CUDA device(s) "
            "are visible"
        )
    if dist_url in (None, "", "auto"):
        if num_machines != 1:
            raise ValueError('dist_url="auto" only works on a single machine; pass --dist-url tcp://HOST:PORT '
                             "(the same on every machine) for multi-machine jobs")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous is unreliable across machines; prefer tcp://")
    logger.info("spawning %d %s worker(s) (world size %d) with rendezvous %s",
                num_gpus_per_machine, backend, world_size, dist_url)

    context = mp.spawn(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout, backend),
        join=False,
        daemon=False,
    )
    with _ForwardSignals(context.processes):
        while not context.join():
            pass
    return None
