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

Collective timeout: ``timeout`` (``--dist-timeout`` / ``DIST_TIMEOUT``, default 30 minutes) is given to
``init_process_group`` for spawned workers and under torchrun, and to the gloo group used for
object collectives: a collective that waits longer for a stalled rank raises instead of hanging.

When a spawned worker fails, the others get ``grace_period`` seconds to stop by themselves (they
normally do: DDP failures are agreed on, and the progress watchdog stops every live rank); a
worker still running after that (frozen by SIGSTOP, or blocked in a collective) is killed with its
child processes, at once if it is stopped. A worker that stopped the job through
:func:`report_failure` (the progress watchdog) makes :func:`launch` raise :class:`WorkerStalledError`
with that worker's one-line message. A worker that failed on an error ``describe_error`` recognises (a
user's mistake, a collective timeout, too many bad records: whatever the command line reports in one
line) makes :func:`launch` raise :class:`WorkerFailedError` with that line and exit status, so a
spawned job ends the way a single-process job does, not with a worker's traceback.
"""
from __future__ import annotations

import json
import logging
import multiprocessing.connection
import os
import signal
import socket
import tempfile
import threading
import time
from datetime import timedelta
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import ConfigError
from . import comm

__all__ = ["DEFAULT_TIMEOUT", "STALL_EXIT_CODE", "WorkerFailedError", "WorkerStalledError", "as_timeout", "launch",
           "report_failure", "torchrun_env"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
#: exit status of a process stopped by the progress watchdog (and of ``train_net.py`` then)
STALL_EXIT_CODE = 3
#: seconds the other workers get to stop by themselves after one failed, before they are killed
DEFAULT_GRACE_PERIOD = 10.0
_FAILURE_FILE_ENV = "PARTCATSEG_FAILURE_FILE"


class WorkerFailedError(RuntimeError):
    """A spawned worker stopped the job with a one-line report (``str(self)``) and an exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class WorkerStalledError(WorkerFailedError):
    """A worker stopped the job because training made no progress (see :func:`report_failure`)."""

    def __init__(self, message: str, exit_code: int = STALL_EXIT_CODE):
        super().__init__(message, exit_code)

#: ``describe_error(err)`` -> ``(exit_status, one_line_message)`` for an error a user should see as one
#: line, or ``None`` for a bug (its traceback is kept)
ErrorDescriber = Callable[[BaseException], Optional[Tuple[int, str]]]


def as_timeout(seconds: Union[None, float, int, timedelta], what: str = "timeout") -> timedelta:
    """``seconds`` (a positive number or a timedelta; ``None`` = 30 minutes) as a timedelta."""
    if seconds is None:
        return DEFAULT_TIMEOUT
    if isinstance(seconds, timedelta):
        value = seconds.total_seconds()
    else:
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{what} must be a positive, finite number of seconds, got {seconds!r}")
    return timedelta(seconds=value)


def report_failure(message: str, exit_code: int = STALL_EXIT_CODE) -> None:
    """Record why this process is about to stop the job, for whoever launched it.

    Spawned by :func:`launch`: appended to the launcher's report file (the launcher raises
    :class:`WorkerStalledError` with it for ``STALL_EXIT_CODE``, else :class:`WorkerFailedError`).
    Under torchrun: written to ``TORCHELASTIC_ERROR_FILE`` in torchelastic's format, so torchrun's
    failure summary shows it. Never raises.
    """
    path = os.environ.get(_FAILURE_FILE_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"exit_code": int(exit_code), "message": message.replace("\n", " ")}) + "\n")
        except OSError:
            pass
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file and not os.path.exists(error_file):
        try:
            with open(error_file, "w", encoding="utf-8") as f:
                json.dump({"message": {"message": message, "extraInfo": {
                    "py_callstack": message, "timestamp": str(int(time.time()))}}}, f)
        except OSError:
            pass


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
    comm.set_collective_timeout(timeout)
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
                        backend: str, failure_file: str = "",
                        describe_error: Optional[ErrorDescriber] = None) -> None:
    rank = machine_rank * num_gpus_per_machine + local_rank
    if failure_file:
        os.environ[_FAILURE_FILE_ENV] = failure_file
    try:
        _init_group(backend, dist_url, world_size, rank, local_rank, num_gpus_per_machine, timeout)
        main_func(*args)
    except Exception as err:
        described = describe_error(err) if describe_error is not None else None
        if described is not None:
            report_failure(described[1], described[0])
        raise  # torch keeps the traceback in the worker's error file
    finally:
        _teardown()


def _read_reports(failure_file: str) -> List[Tuple[int, str]]:
    """The workers' reports, oldest first; a line that is not one of ours is skipped."""
    reports: List[Tuple[int, str]] = []
    try:
        with open(failure_file, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError:
        return reports
    for line in lines:
        try:
            entry = json.loads(line)
            reports.append((int(entry["exit_code"]), str(entry["message"])))
        except (ValueError, KeyError, TypeError):
            continue
    return reports


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


def _is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP/SIGTSTP/traced); False where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] in ("T", "t")


def _descendants(pid: int) -> List[int]:
    """Process ids of ``pid``'s children, grandchildren, ... (Linux /proc; empty elsewhere)."""
    parents: dict = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(process: Any) -> None:
    """SIGKILL a worker and whatever it started (data-loader workers), so nothing is left running."""
    children = _descendants(process.pid)
    try:
        os.kill(process.pid, signal.SIGKILL)  # also ends a stopped process
    except ProcessLookupError:
        pass
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.join()


def _finish_resource_tracker() -> None:
    """Let multiprocessing's resource tracker clean up after killed workers now (it warns about their
    semaphores), so that its warning comes before the launcher's error message, not after it."""
    try:
        from multiprocessing import resource_tracker

        stop = getattr(resource_tracker._resource_tracker, "_stop", None)
        if stop is not None:
            stop()  # a later spawn starts a new tracker
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _join_workers(processes: Sequence[Any], error_files: Sequence[str], failure_file: str,
                  grace_period: float) -> None:
    """Wait for every worker; on the first failure stop the rest and raise (see the module docstring)."""
    sentinels = {p.sentinel: i for i, p in enumerate(processes)}
    failed: Optional[int] = None
    while sentinels and failed is None:
        for sentinel in multiprocessing.connection.wait(list(sentinels)):
            index = sentinels.pop(sentinel)
            processes[index].join()
            if processes[index].exitcode != 0:
                failed = index
                break
    if failed is None:
        return
    deadline = time.monotonic() + grace_period
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_alive()]
        if not alive or all(_is_stopped(p.pid) for p in alive):
            break  # a stopped process never stops by itself
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=min(0.5, deadline - time.monotonic()))
    killed = False
    for index, p in enumerate(processes):
        if p.is_alive():
            state = "stopped (SIGSTOP)" if _is_stopped(p.pid) else "still running"
            logger.warning("worker %d (pid %d) is %s after worker %d failed: killing it and its children",
                           index, p.pid, state, failed)
            _kill_tree(p)
            killed = True
        else:
            p.join()
    if killed:
        _finish_resource_tracker()

    failed_process = processes[failed]
    reports = _read_reports(failure_file) if failure_file else []
    if reports:
        exit_code, message = reports[0]
        if exit_code == STALL_EXIT_CODE:
            raise WorkerStalledError(message)
        raise WorkerFailedError(message, exit_code)
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

    error_file = error_files[failed] if failed < len(error_files) else ""
    if error_file and os.access(error_file, os.R_OK) and os.path.getsize(error_file) > 0:
        import pickle

        with open(error_file, "rb") as fh:
            original_trace = pickle.load(fh)
        msg = f"\n\n-- Process {failed:d} terminated with the following error:\n{original_trace}"
        raise ProcessRaisedException(msg, failed, failed_process.pid)
    exitcode = failed_process.exitcode
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"<Unknown signal {-exitcode}>"
        raise ProcessExitedException(f"process {failed:d} terminated with signal {name}", error_index=failed,
                                     error_pid=failed_process.pid, exit_code=exitcode, signal_name=name)
    raise ProcessExitedException(f"process {failed:d} terminated with exit code {exitcode:d}", error_index=failed,
                                 error_pid=failed_process.pid, exit_code=exitcode)


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = "auto",
    args: Sequence[Any] = (),
    timeout: Union[timedelta, float, None] = DEFAULT_TIMEOUT,
    backend: Optional[str] = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    describe_error: Optional[ErrorDescriber] = None,
) -> Any:
    """Run ``main_func(*args)`` on every process of the job.

    Args:
        main_func: picklable (module-level) function; in spawned workers it runs after the process
            group is up, so it can use :mod:`partcatseg.engine.comm`.
        num_gpus_per_machine: processes per machine (one per GPU; on CPU, one per gloo worker).
        num_machines, machine_rank: multi-machine jobs (each machine runs ``launch`` itself).
        dist_url: rendezvous URL, e.g. ``tcp://host:port``; ``"auto"`` = a free local port
            (single machine only).
        timeout: how long a collective may wait for the other ranks (a timedelta or seconds;
            ``None`` = 30 minutes), for spawned workers and under torchrun.
        backend: ``None`` = NCCL if CUDA is available else gloo; or "gloo"/"nccl" explicitly.
        grace_period: seconds the other spawned workers get to stop by themselves after one failed.
        describe_error: for spawned workers: maps an exception to ``(exit_status, message)`` when it is
            one a user should see as one line (``None`` keeps the traceback); see :class:`WorkerFailedError`.

    Returns:
        ``main_func``'s return value when it runs in this process (world size 1, or torchrun);
        ``None`` after spawned workers finish. A worker's exception is re-raised here (torch's
        ``ProcessRaisedException``); a worker stopped by the progress watchdog raises
        :class:`WorkerStalledError` with its message; a worker's error that ``describe_error`` recognised
        raises :class:`WorkerFailedError` with its line and exit status.
    """
    timeout = as_timeout(timeout)
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

    fd, failure_file = tempfile.mkstemp(prefix="partcatseg_failures_", suffix=".txt")
    os.close(fd)
    try:
        context = mp.spawn(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout, backend,
                  failure_file, describe_error),
            join=False,
            daemon=False,
        )
        with _ForwardSignals(context.processes):
            _join_workers(context.processes, getattr(context, "error_files", []), failure_file, grace_period)
    finally:
        try:
            os.unlink(failure_file)
        except OSError:
            pass
    return None
