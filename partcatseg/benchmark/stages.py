"""Where an inference forward spends its time: wall time and executed FLOPs per declared stage.

A model names its stages with :meth:`~partcatseg.modeling.SegmentationModel.profile_stages` (stage ->
``(object, method)`` call points). :func:`stage_clock` wraps those points on their instances while a
forward runs, so the profile needs no profiler (whose overhead distorts small kernels) and leaves
the model's code paths as they are; it works for any model that declares its stages, a plugin included. Time is *exclusive*: a call nested in another
stage's call is charged to the inner stage only; the rest of the forward is "other".

On CUDA every stage boundary synchronises the device, so the stage times add up to the forward's
time but the forward itself is slightly slower than without the clock.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from typing import Any, Callable, Iterator, Optional

from .measure import sync

__all__ = ["OTHER", "stage_clock", "profile_stages"]

#: The name of the time no declared stage covers (pre-processing, glue, whatever a model did not name).
OTHER = "other"


class _Clock:
    """Exclusive seconds (and FLOPs, given a running ``FlopCounterMode``) per stage name."""

    def __init__(self, device: str, counter: Any = None) -> None:
        self.device = device
        self.counter = counter
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # per open call: [time, flops] spent in nested stages

    def _now(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter(), float(self.counter.get_total_flops()) if self.counter is not None else 0.0

    def wrap(self, stage: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, f0 = self._now()
            self._stack.append([0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                inner_t, inner_f = self._stack.pop()
                t1, f1 = self._now()
                self.seconds[stage] += (t1 - t0) - inner_t
                self.flops[stage] += (f1 - f0) - inner_f
                if self._stack:
                    self._stack[-1][0] += t1 - t0
                    self._stack[-1][1] += f1 - f0

        return timed


_MISSING = object()


@contextlib.contextmanager
def stage_clock(points: dict[str, list[tuple[Any, str]]], device: str, counter: Any = None) -> Iterator[_Clock]:
    """Charge calls of the declared points to their stages while the block runs; restore them after.

    Raises ``ValueError`` for a point that does not exist or is declared twice (its time would be
    charged to one stage only).
    """
    clock = _Clock(device, counter)
    patched: list[tuple[Any, str, Any]] = []
    seen: set[tuple[int, str]] = set()
    try:
        for stage, calls in points.items():
            if stage == OTHER:
                raise ValueError(f"stage name {OTHER!r} is reserved for the time no stage covers")
            for owner, name in calls:
                if (id(owner), name) in seen:
                    raise ValueError(f"{type(owner).__name__}.{name} is declared in two stages")
                fn = getattr(owner, name, None)
                if not callable(fn):
                    raise ValueError(f"stage {stage!r}: {type(owner).__name__} has no method {name!r}")
                seen.add((id(owner), name))
                patched.append((owner, name, vars(owner).get(name, _MISSING)))
                object.__setattr__(owner, name, clock.wrap(stage, fn))
        yield clock
    finally:
        for owner, name, original in reversed(patched):
            if original is _MISSING:
                object.__delattr__(owner, name)
            else:
                object.__setattr__(owner, name, original)


def profile_stages(model: Any, run: Callable[[], Any], device: str, warmup: int, repeats: int,
                   count_flops: bool = True) -> dict[str, Any]:
    """Per-stage wall time of ``run()`` (one inference forward of ``model``) and per-stage FLOPs.

    Returns ``{"seconds": [total per repeat], "stages": {name: {"seconds": [per repeat], "gflop": x}}}``
    with the stages in declaration order and ``other`` last; a stage's times and the other time add up
    to the total of each repeat.
    """
    points = model.profile_stages()
    names = list(points) + [OTHER]
    gflop: dict[str, Optional[float]] = {name: None for name in names}
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        from .flops import _extra_formulas

        with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            with stage_clock(points, device, counter) as clock:
                run()
        total = float(counter.get_total_flops())
        for name in points:
            gflop[name] = clock.flops.get(name, 0.0) / 1e9
        gflop[OTHER] = (total - sum(clock.flops.values())) / 1e9
    for _ in range(max(0, warmup)):
        run()
    totals: list[float] = []
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(max(1, repeats)):
        with stage_clock(points, device) as clock:
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            total_t = time.perf_counter() - start
        totals.append(total_t)
        for name in points:
            seconds[name].append(clock.seconds.get(name, 0.0))
        seconds[OTHER].append(total_t - sum(clock.seconds.values()))
    return {"seconds": totals, "stages": {name: {"seconds": seconds[name], "gflop": gflop[name]} for name in names}}
