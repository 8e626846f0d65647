"""Hooks: code run by the trainer around every iteration (detectron2's hook protocol).

Order matters; :func:`partcatseg.engine.train_loop.default_hooks` registers
``LRScheduler → PeriodicCheckpointer → EvalHook → PeriodicWriter`` so that a checkpoint stores
the lr of the *next* iteration, evaluation runs on the just-saved weights, and the writer reports
the evaluation results of the same iteration.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvcorePeriodicCheckpointer

from ..evaluation.tables import flatten_results
from . import comm
from .events import EventWriter, get_event_storage
from .rng import capture_rng_state, restore_rng_state

__all__ = ["EvalHook", "HookBase", "LRScheduler", "PeriodicCheckpointer", "PeriodicWriter"]

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
    """Calls every writer every ``period`` iterations, after the last one, and at the end."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20):
        self.writers = list(writers)
        self.period = int(period)

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            for w in self.writers:
                w.write()

    def after_train(self) -> None:
        for w in self.writers:
            w.write()  # anything put by other hooks' after_train (final evaluation)
            w.close()
