"""Training metrics: an in-memory store and the writers that report it (detectron2 formats).

* :class:`EventStorage` keeps a history of every scalar put during training (losses, lr, times,
  evaluation results) together with the iteration it belongs to.
* :class:`CommonMetricPrinter` logs the progress line
  (``eta: … iter: … total_loss: … loss_x: … term_y: … time: … data_time: … lr: … max_mem: …``).
* :class:`JSONWriter` appends one JSON object per line to ``metrics.json``, each with
  ``"iteration"`` — the format detectron2's tools and notebooks read.
* :class:`TensorboardWriter` writes the same scalars as TensorBoard event files.

Scalars marked ``smoothing_hint=True`` (training losses, times) are reported as the median over
the last ``window_size`` values; others (lr, evaluation results) as their latest value.
"""
from __future__ import annotations

import abc

import datetime
import json
import logging
import os
import sys
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "TensorboardWriter",
    "get_event_storage",
    "max_memory_mb",
]

_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The storage of the innermost running training loop (error when none is running)."""
    if not _STORAGE_STACK:
        raise RuntimeError("get_event_storage() called outside a training loop (no EventStorage is active)")
    return _STORAGE_STACK[-1]


class EventStorage:
    """Scalar histories keyed by name; use as a context manager to make it current."""

    def __init__(self, start_iter: int = 0):
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest: Dict[str, Tuple[float, int]] = {}
        self.iter = int(start_iter)

    def put_scalar(self, name: str, value: Any, smoothing_hint: bool = True, cur_iter: Optional[int] = None) -> None:
        value = float(value.detach().cpu().item() if isinstance(value, torch.Tensor) else value)
        it = self.iter if cur_iter is None else int(cur_iter)
        self._history[name].update(value, it)
        self._latest[name] = (value, it)
        previous = self._smoothing_hints.get(name)
        if previous is not None and previous != smoothing_hint:
            raise ValueError(f"scalar {name!r} was put with smoothing_hint={previous} before, now {smoothing_hint}")
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"no scalar named {name!r} has been put (known: {sorted(self._history)})")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """name -> (latest value, iteration it was put at)."""
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like :meth:`latest`, with smoothed scalars replaced by their recent median."""
        out = {}
        for name, (value, it) in self._latest.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            out[name] = (value, it)
        return out

    def smoothing_hints(self) -> Dict[str, bool]:
        return dict(self._smoothing_hints)

    def __enter__(self) -> "EventStorage":
        _STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert _STORAGE_STACK[-1] is self
        _STORAGE_STACK.pop()


class EventWriter(abc.ABC):
    """Base class: ``write()`` reports what the current storage holds; ``close()`` releases files."""

    @abc.abstractmethod
    def write(self) -> None:
        """Report what the current storage holds."""

    def close(self) -> None:
        pass


def max_memory_mb() -> Optional[float]:
    """Peak memory of this process in MiB: CUDA max allocated, else the CPU peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 / 1024.0 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


class CommonMetricPrinter(EventWriter):
    """Logs training progress: ETA, iteration, losses, times, lr, peak memory."""

    def __init__(self, max_iter: int, window_size: int = 20, logger: Optional[logging.Logger] = None):
        self.max_iter = max_iter
        self.window_size = window_size
        self.logger = logger or logging.getLogger("partcatseg.engine.train_loop")

    def _eta(self, storage: EventStorage, iteration: int) -> str:
        try:
            per_iter = storage.history("time").median(1000)
        except KeyError:
            return ""
        seconds = per_iter * (self.max_iter - iteration - 1)
        storage.put_scalar("eta_seconds", seconds, smoothing_hint=False)
        return f"eta: {datetime.timedelta(seconds=int(seconds))}  "

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration >= self.max_iter:
            return  # only progress is reported here; nothing to add once training has finished
        hist = storage.histories()
        if "total_loss" not in hist:
            return
        parts = [f"{self._eta(storage, iteration)}iter: {iteration}"]
        names = ["total_loss"] + sorted(k for k in hist if k != "total_loss" and ("loss" in k or k.startswith("term_")))
        parts += [f"{k}: {hist[k].median(self.window_size):.4g}" for k in names]
        if "time" in hist:
            parts.append(f"time: {hist['time'].avg(self.window_size):.4f}")
        if "data_time" in hist:
            parts.append(f"data_time: {hist['data_time'].avg(self.window_size):.4f}")
        if "lr" in hist:
            parts.append(f"lr: {hist['lr'].latest():.5g}")
        mem = max_memory_mb()
        if mem is not None:
            parts.append(f"max_mem: {mem:.0f}M")
        self.logger.info(" " + "  ".join(parts))


class JSONWriter(EventWriter):
    """Appends ``{"iteration": N, name: value, ...}`` lines with every scalar not yet written."""

    def __init__(self, json_file: str, window_size: int = 20):
        os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)
        self.path = json_file
        self._file = open(json_file, "a")
        self.window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        per_iter: Dict[int, Dict[str, float]] = defaultdict(dict)
        for name, (value, it) in storage.latest_with_smoothing_hint(self.window_size).items():
            if it > self._last_write:
                per_iter[it][name] = value
        if not per_iter:
            return
        for it in sorted(per_iter):
            self._file.write(json.dumps({**per_iter[it], "iteration": it}, sort_keys=True) + "\n")
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError:
            pass
        self._last_write = max(per_iter)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class TensorboardWriter(EventWriter):
    """TensorBoard scalars under ``log_dir`` (event files are created on the first write)."""

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs: Any):
        self.log_dir = log_dir
        self.window_size = window_size
        self._kwargs = kwargs
        self._writer = None
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        new = [(k, v, it) for k, (v, it) in storage.latest_with_smoothing_hint(self.window_size).items()
               if it > self._last_write]
        if not new:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.log_dir, **self._kwargs)
        for name, value, it in new:
            self._writer.add_scalar(name, value, it)
        self._writer.flush()
        self._last_write = max(it for _, _, it in new)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
