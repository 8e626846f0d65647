"""Hooks: code run by the trainer around every iteration (detectron2's hook protocol).

Order matters; :func:`partcatseg.engine.train_loop.default_hooks` registers
``ProgressWatchdog → LRScheduler → PeriodicCheckpointer → EvalHook → PeriodicWriter`` so that a
checkpoint stores the lr of the *next* iteration, evaluation runs on the just-saved weights, and the
writer reports the evaluation results of the same iteration.

:class:`ProgressWatchdog` is a thread per rank that stops the whole job, with one line naming the
stalled rank, when no iteration finishes within ``SOLVER.WATCHDOG_SECONDS`` (see its docstring).
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvcorePeriodicCheckpointer

from ..evaluation.tables import flatten_results
from . import comm
from .events import EventWriter, get_event_storage
from .launch import _FAILURE_FILE_ENV, STALL_EXIT_CODE, report_failure
from .rng import capture_rng_state, restore_rng_state

__all__ = ["EvalHook", "HookBase", "LRScheduler", "PeriodicCheckpointer", "PeriodicWriter", "ProgressState",
           "ProgressWatchdog", "StallVerdict", "judge_stall"]

logger = logging.getLogger(__name__)


class HookBase:
    """Override any of the callbacks; ``self.trainer`` is set when the hook is registered."""

    trainer: Any = None

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        """State saved in checkpoints (under ``trainer.hooks[<class name>]``); empty = nothing."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class LRScheduler(HookBase):
    """Steps the lr scheduler after every iteration and records the lr as ``"lr"``."""

    def __init__(self, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None):
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._group = 0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optimizer if self._optimizer is not None else self.trainer.optimizer

    @property
    def scheduler(self) -> Any:
        return self._scheduler if self._scheduler is not None else self.trainer.scheduler

    @staticmethod
    def reported_group(optimizer: torch.optim.Optimizer) -> int:
        """The group whose lr is logged: the lr shared by most tensors (detectron2's choice,
        which does not depend on whether groups are merged)."""
        counts: Counter = Counter()
        for g in optimizer.param_groups:
            counts[g.get("initial_lr", g["lr"])] += len(g["params"])
        best = counts.most_common(1)[0][0]
        return next(i for i, g in enumerate(optimizer.param_groups) if g.get("initial_lr", g["lr"]) == best)

    def before_train(self) -> None:
        self._group = self.reported_group(self.optimizer)

    def after_step(self) -> None:
        lr = self.optimizer.param_groups[self._group]["lr"]
        get_event_storage().put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    def state_dict(self) -> Dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


class _CollectiveSave:
    """The checkpointer fvcore's PeriodicCheckpointer drives: every rank gathers its resume state
    (RNG, data position) through ``trainer.save_checkpoint``; only the main process writes."""

    def __init__(self, hook: "PeriodicCheckpointer", checkpointer: Any):
        self.hook, self.checkpointer = hook, checkpointer
        self.path_manager = checkpointer.path_manager
        self._last = ""

    def save(self, name: str, **kwargs: Any) -> None:
        self.hook.trainer.save_checkpoint(name, self.checkpointer)  # records the iteration itself
        self._last = os.path.join(self.checkpointer.save_dir, f"{name}.pth")

    def get_checkpoint_file(self) -> str:
        return self._last


class PeriodicCheckpointer(_FvcorePeriodicCheckpointer, HookBase):
    """fvcore's schedule as a hook: ``{prefix}_{iter:07d}.pth`` every ``period`` iterations,
    ``{prefix}_final.pth`` at the end, at most ``max_to_keep`` periodic files (main process prunes).

    Runs on every rank: the per-rank resume state is gathered collectively before each save.
    """

    def __init__(self, checkpointer: Any, period: int, max_iter: Optional[int] = None,
                 max_to_keep: Optional[int] = None, file_prefix: str = "model"):
        if period <= 0:
            raise ValueError(f"checkpoint period must be positive (SOLVER.CHECKPOINT_PERIOD), got {period}")
        super().__init__(_CollectiveSave(self, checkpointer), period, max_iter,
                         max_to_keep if comm.is_main_process() else None, file_prefix)

    def before_train(self) -> None:
        if self.max_iter is None:
            self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        self.step(self.trainer.iter)


class EvalHook(HookBase):
    """Runs ``eval_function()`` every ``eval_period`` iterations and after the last one.

    ``eval_function`` returns a (nested) dict of numbers; it runs on every rank (evaluation is a
    collective). The flattened results are put into the event storage (so they reach
    metrics.json/TensorBoard) and kept as ``trainer.last_eval_results``. The global RNG state is
    restored afterwards so evaluating does not change the training's random stream.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Optional[Mapping[str, Any]]],
                 eval_after_train: bool = True):
        self.period = int(eval_period)
        self.func = eval_function
        self.eval_after_train = eval_after_train

    def _do_eval(self) -> None:
        rng = capture_rng_state()
        try:
            results = self.func()
        finally:
            restore_rng_state(rng)
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(f"EvalHook: eval_function returned {type(results).__name__}, expected a dict")
            flat = flatten_results(results)
            numbers = {}
            for k, v in flat.items():
                try:
                    numbers[k] = float(v)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"EvalHook: eval_function must return a nested dict of numbers; "
                                     f"got {k!r}: {v!r}") from exc
            finite = {k: v for k, v in numbers.items() if math.isfinite(v)}
            get_event_storage().put_scalars(smoothing_hint=False, **finite)
            self.trainer.last_eval_results = results
            # per-class numbers go to metrics.json / TensorBoard; the log gets the summary keys
            summary = {k: v for k, v in numbers.items() if "-" not in k.rsplit("/", 1)[-1] or
                       k.rsplit("/", 1)[-1] in ("mIoU-base", "mIoU-unbase", "h-IoU")}
            logger.info("Evaluation results at iteration %d: %s", self.trainer.iter,
                        ", ".join(f"{k}={v:.2f}" for k, v in summary.items()))
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self.period > 0 and next_iter % self.period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # iter == max_iter only when the loop completed (not after an error or a stop request)
        if self.eval_after_train and self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()


class PeriodicWriter(HookBase):
    """Calls every writer every ``period`` iterations, after the last one, and at the end.

    ``first_iters``: also after these iterations (counted from the start or resume), so that a long
    run shows its progress line and ETA from the first iteration instead of after ``period`` of them.
    """

    def __init__(self, writers: Sequence[EventWriter], period: int = 20, first_iters: Sequence[int] = ()):
        self.writers = list(writers)
        self.period = int(period)
        self.first_iters = {int(i) for i in first_iters}

    def after_step(self) -> None:
        it = self.trainer.iter
        early = (it - self.trainer.start_iter) in self.first_iters
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1 or early:
            for w in self.writers:
                w.write()

    def after_train(self) -> None:
        for w in self.writers:
            w.write()  # anything put by other hooks' after_train (final evaluation)
            w.close()


# ------------------------------------------------------------------------------------ watchdog
#: Where each phase lies within an iteration. Ranks wait for the rank(s) furthest behind, so those
#: are the ones to blame when every rank is stuck.
PHASE_ORDER = {"setup": -2, "before_step": -1, "data": 0, "forward": 1, "backward": 2, "exchange": 3,
               "optimizer": 4, "after_step": 5, "finishing": 6}
#: Phases of the training step proper. Hooks (checkpoint writing, evaluation), the start-up and the
#: end of training can legitimately take long and are not timed (a rank stuck there is caught by the
#: collective timeout); a rank whose process stops running is caught in any phase.
TIMED_PHASES = frozenset({"data", "forward", "backward", "exchange", "optimizer"})
#: The first iteration after a start or a resume also does one-time work (text features of the
#: vocabulary, torch.compile, cuDNN autotuning): it is allowed at least this long.
FIRST_ITERATION_SECONDS = 600.0


class ProgressState:
    """What the training loop is doing, set by the trainer's thread, read by the watchdog thread.

    ``state`` is ``(seq, phase, iteration, last_completed, synced)``; ``seq`` changes with every
    update, so the reader sees progress even when the phase name repeats; ``synced`` is the last
    iteration whose per-step exchange (a collective) this rank passed: every rank got that far.
    One tuple assignment per update (atomic for the reader).
    """

    __slots__ = ("state", "start_iter")

    def __init__(self) -> None:
        self.state: Tuple[int, str, int, int, int] = (0, "setup", 0, -1, -1)
        self.start_iter = 0

    def reset(self, start_iter: int) -> None:
        self.start_iter = int(start_iter)
        self.state = (self.state[0] + 1, "setup", int(start_iter), int(start_iter) - 1, int(start_iter) - 1)

    def enter(self, phase: str, iteration: int) -> None:
        seq, _, _, done, synced = self.state
        self.state = (seq + 1, phase, int(iteration), done, synced)

    def completed(self, iteration: int) -> None:
        seq, phase, _, _, synced = self.state
        self.state = (seq + 1, phase, int(iteration), int(iteration), synced)

    def exchanged(self, iteration: int) -> None:
        seq, phase, it, done, _ = self.state
        self.state = (seq + 1, phase, it, done, int(iteration))


@dataclass
class StallVerdict:
    """The rank(s) judged stalled, for how long, and a line of detail per rank involved."""

    ranks: List[int]
    seconds: float
    last_completed: List[int]
    details: List[str] = field(default_factory=list)

    def message(self, last_checkpoint: str) -> str:
        who = f"rank {self.ranks[0]}" if len(self.ranks) == 1 else "ranks " + ", ".join(map(str, self.ranks))
        done = sorted(set(self.last_completed))
        if done == [-1] or not done:
            last = "no iteration finished yet"
        elif len(done) == 1:
            last = f"last iteration {done[0]}"
        else:
            last = "last iterations " + ", ".join(str(k) if k >= 0 else "none" for k in self.last_completed)
        return (f"{who} made no progress for {self.seconds:.0f} s ({last}); stopping all ranks; "
                f"last checkpoint: {last_checkpoint or 'none'}")


def _describe(rank: int, hb: Optional[Mapping[str, Any]], silent: float, where: str) -> str:
    if hb is None:
        return (f"rank {rank}: no heartbeat from it in {where} for {silent:.0f} s (dead before its first heartbeat, "
                "or OUTPUT_DIR is not shared by all machines)")
    text = (f"rank {rank} (pid {hb.get('pid')} on {hb.get('host')}): in '{hb.get('phase')}' of iteration "
            f"{hb.get('iteration')} for {float(hb.get('age', 0.0)) + silent:.0f} s")
    if silent >= 1.0:
        text += f", heartbeat silent for {silent:.0f} s"
    return text


def judge_stall(heartbeats: Mapping[int, Mapping[str, Any]], silent: Mapping[int, float], world_size: int,
                me: int, limit: float, where: str = "the heartbeat directory") -> Optional[StallVerdict]:
    """Decide, from one rank's view, whether training stalled and which rank(s) to blame.

    Args:
        heartbeats: rank -> its latest heartbeat (``phase``, ``iteration``, ``last_completed``, ``age``:
            seconds in that phase when written, ``allowance``: how long that phase may take,
            optionally ``synced``: the last iteration whose per-step collective it passed);
            ranks without a visible heartbeat are absent.
        silent: rank -> seconds (this rank's clock) since that rank's heartbeat last changed, or since
            this rank started looking for a rank without one; this rank's own entry is ignored.
        me: this rank; ``limit``: ``SOLVER.WATCHDOG_SECONDS``.

    Rules: a rank whose heartbeat has been silent for ``limit`` seconds is stalled (its process is
    frozen or dead: the heartbeat comes from a thread that runs whatever the training does), unless
    it announced the end of its training. Otherwise, a rank that has spent its allowance in a timed
    phase is stuck; if the rank(s) furthest behind (iteration, then phase within it) are all stuck,
    they are stalled: the others are waiting for them. If a rank furthest behind is still within its
    allowance, or busy in an untimed phase (writing a checkpoint, evaluating), nobody is blamed yet;
    nor while a rank that has not been heard from is silent for less than ``limit``.
    """
    dead = []
    for r in range(world_size):
        if r == me:
            continue
        hb = heartbeats.get(r)
        if hb is not None and hb.get("phase") == "finishing":
            continue
        if silent.get(r, 0.0) >= limit:
            dead.append(r)
    if dead:
        ranks = dead
    elif any(r not in heartbeats for r in range(world_size)):
        return None  # a rank not heard from yet may be the one behind: wait until it counts as silent
    else:
        def stuck(r: int) -> bool:
            hb = heartbeats[r]
            spent = float(hb.get("age", 0.0)) + (0.0 if r == me else silent.get(r, 0.0))
            return hb.get("phase") in TIMED_PHASES and spent >= float(hb.get("allowance", limit))

        if not any(stuck(r) for r in heartbeats):
            return None
        position = {r: (int(hb.get("iteration", 0)), PHASE_ORDER.get(str(hb.get("phase")), 0))
                    for r, hb in heartbeats.items()}
        lowest = min(position.values())
        ranks = [r for r in sorted(position) if position[r] == lowest]
        if not all(stuck(r) for r in ranks):
            return None

    def seconds(r: int) -> float:
        hb = heartbeats.get(r)
        extra = 0.0 if r == me else silent.get(r, 0.0)
        return (float(hb.get("age", 0.0)) if hb is not None else 0.0) + extra

    # a heartbeat can be one interval old; a collective passed by any rank was reached by all, so
    # every rank finished the iteration before it
    floor = max(int(hb.get("synced", -1)) for hb in heartbeats.values()) - 1 if heartbeats else -1
    details = [_describe(r, heartbeats.get(r), 0.0 if r == me else silent.get(r, 0.0), where)
               for r in range(world_size) if r in heartbeats or r in ranks]
    return StallVerdict(ranks=ranks, seconds=max(seconds(r) for r in ranks),
                        last_completed=[max(floor, int(heartbeats[r].get("last_completed", -1)) if r in heartbeats
                                            else -1) for r in ranks],
                        details=details)


def _exit_job(message: str) -> None:
    """Default action of the watchdog: report, stop this process's children, exit with STALL_EXIT_CODE.

    The main thread may be blocked inside a collective that will never return, so the process
    exits from the watchdog thread (``os._exit``). Checkpoints are written atomically, so every file
    already written stays valid; the watchdog waits for a save in progress before it gets here.
    """
    report_failure(message)
    if not os.environ.get(_FAILURE_FILE_ENV):  # spawned by launch(): the launcher prints it last
        print(message, file=sys.stderr, flush=True)
    for name in ("partcatseg", "fvcore", ""):
        for handler in logging.getLogger(name or None).handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
    for child in multiprocessing.active_children():  # data-loader workers
        try:
            child.kill()
        except Exception:  # noqa: BLE001
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(STALL_EXIT_CODE)


class ProgressWatchdog(HookBase):
    """Stops every rank, naming the stalled one, when no iteration finishes within ``limit_seconds``.

    Each rank runs a thread that every ``interval`` seconds writes the rank's heartbeat to
    ``heartbeat_dir/rank<N>.json`` (pid, host, phase of the step, iteration, last finished iteration,
    seconds in the phase) — a side channel that needs no collective, so it works while the ranks are
    blocked in one, and stays on disk for a post-mortem. When its own rank has not moved for a
    heartbeat interval, the thread reads the other ranks' heartbeats and applies
    :func:`judge_stall`. On a verdict it logs where every rank was, waits for a checkpoint being
    written to finish, and calls ``on_stall(message)``; the default reports the message to the
    launcher and exits the process with status :data:`~partcatseg.engine.launch.STALL_EXIT_CODE`.
    Every live rank reaches the same verdict and exits; the launcher kills a frozen one.

    The message is one line: ``rank 1 made no progress for 62 s (last iteration 41); stopping all
    ranks; last checkpoint: out/model_0000039.pth``.

    Ages are accumulated from the thread's own ticks (a tick counts at most two intervals), so a
    job that is suspended as a whole (Ctrl-Z, a scheduler's suspend) is not judged stalled when it
    continues, and no two machines' clocks are compared. The heartbeat directory must be shared by
    all machines (as OUTPUT_DIR is for resuming); on a network file system keep ``limit_seconds`` well
    above its attribute-cache time (NFS: up to 60 s).
    """

    def __init__(self, limit_seconds: float, heartbeat_dir: Optional[str], *,
                 first_iteration_seconds: float = FIRST_ITERATION_SECONDS, interval: Optional[float] = None,
                 on_stall: Optional[Callable[[str], None]] = None):
        if not limit_seconds > 0:
            raise ValueError(f"ProgressWatchdog: limit must be positive (SOLVER.WATCHDOG_SECONDS), got {limit_seconds}")
        self.limit = float(limit_seconds)
        self.first_iteration_seconds = max(self.limit, float(first_iteration_seconds))
        self.interval = float(interval) if interval else min(max(self.limit / 10.0, 0.25), 10.0)
        self.heartbeat_dir = heartbeat_dir
        self.on_stall = on_stall or _exit_job
        self.verdict: Optional[StallVerdict] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._token = ""
        self._tick = 0
        self._write_error_logged = False

    # -- hook protocol
    def before_train(self) -> None:
        self._rank, self._world = comm.get_rank(), comm.get_world_size()
        # one token per training run, agreed by all ranks: heartbeats of earlier runs are ignored
        self._token = comm.all_gather(secrets.token_hex(8))[0]
        self._progress: ProgressState = self.trainer.progress
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._tick = 0
        self._seq = None
        self._age = 0.0
        self._last_checkpoint_at_start = self.trainer.last_checkpoint_file()
        if self.heartbeat_dir:
            os.makedirs(self.heartbeat_dir, exist_ok=True)
        self._write(self._heartbeat())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="partcatseg-progress-watchdog", daemon=True)
        self._thread.start()
        logger.info("progress watchdog: stops all ranks when an iteration makes no progress for %g s "
                    "(SOLVER.WATCHDOG_SECONDS; first iteration: %g s); heartbeats in %s", self.limit,
                    self.first_iteration_seconds, self.heartbeat_dir or "(none)")

    def after_train(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval))
            self._thread = None
        if self._token:
            self._write(self._heartbeat())  # phase "finishing": the others stop expecting heartbeats

    # -- heartbeats
    def _path(self, rank: int) -> Optional[str]:
        return os.path.join(self.heartbeat_dir, f"rank{rank}.json") if self.heartbeat_dir else None

    def _heartbeat(self) -> Dict[str, Any]:
        _, phase, iteration, done, synced = self._progress.state
        first = iteration <= self._progress.start_iter
        return {"token": self._token, "tick": self._tick, "rank": self._rank, "pid": self._pid, "host": self._host,
                "phase": phase, "iteration": iteration, "last_completed": done, "synced": synced,
                "age": round(self._age, 3),
                "allowance": self.first_iteration_seconds if first else self.limit, "time": time.time()}

    def _write(self, heartbeat: Dict[str, Any]) -> None:
        path = self._path(self._rank)
        if path is None:
            return
        tmp = f"{path}.tmp{self._pid}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(heartbeat, f)
            os.replace(tmp, path)
        except OSError as exc:
            if not self._write_error_logged:
                logger.warning("progress watchdog: cannot write the heartbeat %s (%s); other ranks cannot see this "
                               "one", path, exc)
                self._write_error_logged = True

    def _read(self, rank: int) -> Optional[Dict[str, Any]]:
        path = self._path(rank)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                hb = json.load(f)
        except (OSError, ValueError):
            return None
        return hb if isinstance(hb, dict) and hb.get("token") == self._token else None

    # -- the thread
    def _run(self) -> None:
        try:
            self._watch()
        except Exception:  # noqa: BLE001 - a bug here must not go unnoticed, nor stop training
            logger.exception("progress watchdog on rank %d failed; training goes on without it", self._rank)

    def _watch(self) -> None:
        last = time.monotonic()
        seen: Dict[int, Tuple[Any, float]] = {}   # rank -> (its last tick seen, seconds silent)
        latest: Dict[int, Dict[str, Any]] = {}
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            elapsed, last = now - last, now
            step = min(elapsed, 2.0 * self.interval)  # suspended as a whole: not a stall
            if elapsed > 3.0 * self.interval:
                seen.clear()
            seq = self._progress.state[0]
            if seq != self._seq:
                self._seq, self._age = seq, 0.0
            else:
                self._age += step
            self._tick += 1
            mine = self._heartbeat()
            self._write(mine)
            if self._age < self.interval:  # moving: nothing to judge
                seen.clear()
                continue
            heartbeats = {self._rank: mine}
            silent: Dict[int, float] = {}
            for r in range(self._world):
                if r == self._rank:
                    continue
                hb = self._read(r)
                if hb is None and r in latest:
                    hb = latest[r]  # unreadable this time (being replaced): keep the last one read
                tick = hb.get("tick") if hb is not None else None
                previous = seen.get(r)
                quiet = previous[1] + step if previous is not None and previous[0] == tick else 0.0
                seen[r] = (tick, quiet)
                silent[r] = quiet
                if hb is not None:
                    heartbeats[r] = latest[r] = hb
            verdict = judge_stall(heartbeats, silent, self._world, self._rank, self.limit,
                                  where=self.heartbeat_dir or "(no heartbeat directory)")
            if verdict is not None:
                self._fire(verdict)
                return

    def _fire(self, verdict: StallVerdict) -> None:
        self.verdict = verdict
        # never cut a checkpoint write short (it is atomic anyway; this keeps its result)
        lock = getattr(self.trainer, "save_lock", None)
        acquired = lock.acquire(timeout=max(60.0, self.limit)) if lock is not None else False
        try:
            checkpoint = self.trainer.last_checkpoint_file() or self._last_checkpoint_at_start
            message = verdict.message(checkpoint)
            logger.error("progress watchdog on rank %d: %s", self._rank, "; ".join(verdict.details))
            logger.error(message)
            self.on_stall(message)
        finally:
            if acquired:
                lock.release()
