"""Learning-rate schedules of detectron2 0.6 (+ the DeepLab project's poly schedule).

The schedule is one multiplier ``m(t / MAX_ITER)`` (an fvcore ``ParamScheduler``) applied to every
param group's initial lr by :class:`LRMultiplier`, stepped once per iteration after the optimizer
step, so iteration ``t`` (0-based) trains with ``lr0 · m(t / MAX_ITER)``:

* ``WarmupCosineLR``: ``m = e + (1 − e)·½(1 + cos(π t/T))`` with ``e = BASE_LR_END / BASE_LR``;
* ``WarmupMultiStepLR``: ``m = GAMMA^k`` after the k-th of ``STEPS`` (steps > MAX_ITER dropped);
* both with a warmup over the first ``WARMUP_ITERS``: "linear" ramps from
  ``WARMUP_FACTOR·m(0)`` to ``m(WARMUP_ITERS/T)``, "constant" holds ``WARMUP_FACTOR·m(0)``;
* ``WarmupPolyLR`` (DeepLab): ``m = w(t)·(1 − t/T)^POLY_LR_POWER`` with the warmup factor
  multiplied in (linear ``w = f(1 − t/W) + t/W``, or constant ``f``), and once past warmup never
  below ``POLY_LR_CONSTANT_ENDING`` if that is > 0.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)

__all__ = ["LRMultiplier", "PolyParamScheduler", "WarmupParamScheduler", "build_lr_scheduler", "SCHEDULERS"]

logger = logging.getLogger(__name__)

SCHEDULERS = ("WarmupCosineLR", "WarmupMultiStepLR", "WarmupPolyLR")
WARMUP_METHODS = ("linear", "constant")

try:  # torch >= 2.0 public name
    _LRSchedulerBase = torch.optim.lr_scheduler.LRScheduler
except AttributeError:  # pragma: no cover
    _LRSchedulerBase = torch.optim.lr_scheduler._LRScheduler


class WarmupParamScheduler(CompositeParamScheduler):
    """Prefix ``scheduler`` with a warmup covering the fraction ``warmup_length`` of training.

    After warmup the wrapped scheduler sees the global progress (it is not rescaled), so the
    warmup only replaces the first part of the schedule.
    """

    def __init__(self, scheduler: ParamScheduler, warmup_factor: float, warmup_length: float,
                 warmup_method: str = "linear"):
        start = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup: ParamScheduler = ConstantParamScheduler(start)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start, scheduler(warmup_length))
        else:
            raise ValueError(f"SOLVER.WARMUP_METHOD={warmup_method!r}: expected one of {list(WARMUP_METHODS)}")
        super().__init__([warmup, scheduler], interval_scaling=["rescaled", "fixed"],
                         lengths=[warmup_length, 1.0 - warmup_length])


def _warmup_factor_at(method: str, it: int, warmup_iters: int, warmup_factor: float) -> float:
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = it / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"SOLVER.WARMUP_METHOD={method!r}: expected one of {list(WARMUP_METHODS)}")


class PolyParamScheduler(ParamScheduler):
    """DeepLab's ``WarmupPolyLR`` multiplier as a stateless fvcore scheduler.

    Its warm-up multiplies a factor into the decay (detectron2's older rule, :func:`_warmup_factor_at`),
    where the other schedules ramp linearly between values (:class:`WarmupParamScheduler`, fvcore's
    composite, detectron2 0.6); both are kept because each schedule's official numbers depend on its own.
    """

    def __init__(self, max_iter: int, power: float = 0.9, constant_ending: float = 0.0,
                 warmup_factor: float = 0.001, warmup_iters: int = 1000, warmup_method: str = "linear"):
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"SOLVER.WARMUP_METHOD={warmup_method!r}: expected one of {list(WARMUP_METHODS)}")
        self.max_iter = max_iter
        self.power = power
        self.constant_ending = constant_ending
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method

    def __call__(self, where: float) -> float:
        it = int(round(where * self.max_iter))
        factor = _warmup_factor_at(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        decay = math.pow(1.0 - where, self.power)
        if self.constant_ending > 0 and factor == 1.0 and decay < self.constant_ending:
            return self.constant_ending
        return factor * decay


class LRMultiplier(_LRSchedulerBase):
    """Sets every group's lr to its initial lr × ``multiplier(last_epoch / max_iter)``.

    ``last_epoch`` counts iterations. Only ``base_lrs`` and ``last_epoch`` are saved: fvcore
    schedulers are pure functions of progress.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iter: int,
                 last_iter: int = -1):
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(f"LRMultiplier needs an fvcore ParamScheduler, got {type(multiplier).__name__}")
        if max_iter <= 0:
            raise ValueError(f"LRMultiplier: max_iter={max_iter} must be positive (SOLVER.MAX_ITER)")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._last_lr = self.get_lr()

    def get_lr(self) -> List[float]:
        m = self._multiplier(self.last_epoch / self._max_iter)
        return [base_lr * m for base_lr in self.base_lrs]


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """``SOLVER.LR_SCHEDULER_NAME`` as an :class:`LRMultiplier` (see the module docstring)."""
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    max_iter = int(s.MAX_ITER)
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER={s.MAX_ITER!r} must be positive")
    if name == "WarmupPolyLR":
        sched: ParamScheduler = PolyParamScheduler(
            max_iter, power=s.POLY_LR_POWER, constant_ending=s.POLY_LR_CONSTANT_ENDING,
            warmup_factor=s.WARMUP_FACTOR, warmup_iters=s.WARMUP_ITERS, warmup_method=s.WARMUP_METHOD,
        )
        return LRMultiplier(optimizer, sched, max_iter)
    if name == "WarmupMultiStepLR":
        steps = [x for x in s.STEPS if x <= max_iter]
        if len(steps) != len(s.STEPS):
            logger.warning("SOLVER.STEPS=%s has values larger than SOLVER.MAX_ITER=%d; they are ignored",
                           list(s.STEPS), max_iter)
        sched = MultiStepParamScheduler(values=[s.GAMMA**k for k in range(len(steps) + 1)], milestones=steps,
                                        num_updates=max_iter)
    elif name == "WarmupCosineLR":
        end = s.BASE_LR_END / s.BASE_LR if s.BASE_LR else 0.0
        if not 0.0 <= end <= 1.0:
            raise ValueError(f"SOLVER.BASE_LR_END={s.BASE_LR_END} must lie in [0, SOLVER.BASE_LR={s.BASE_LR}]")
        sched = CosineParamScheduler(1.0, end)
    else:
        raise ValueError(f"SOLVER.LR_SCHEDULER_NAME={name!r}: expected one of {list(SCHEDULERS)}")
    sched = WarmupParamScheduler(sched, s.WARMUP_FACTOR, min(s.WARMUP_ITERS / max_iter, 1.0), s.WARMUP_METHOD)
    return LRMultiplier(optimizer, sched, max_iter)
