"""Turn SIGINT/SIGTERM during training into a request to stop after the current iteration.

Cluster schedulers send SIGTERM before killing a job, and Ctrl-C sends SIGINT; dying in the middle
of an optimizer step or a checkpoint write would waste the work since the last checkpoint. The
handler only records the signal; the trainer polls :attr:`StopSignals.received` between
iterations, saves a checkpoint and returns.

A repeat of the signal within ``grace_seconds`` is ignored (Ctrl-C reaches a worker both
directly and through the launcher); a later repeat raises ``KeyboardInterrupt`` to abort at once.
Handlers can only be installed from the main thread; elsewhere this is a no-op.

Data-loader worker processes should call :func:`ignore_stop_signals` (e.g. from
``worker_init_fn``): a worker killed by Ctrl-C/SIGTERM makes torch raise in the training process
before it can save; ignoring the signals lets the trainer stop and shut the workers down itself.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Dict, Optional, Sequence

__all__ = ["StopSignals", "ignore_stop_signals"]

logger = logging.getLogger(__name__)


class StopSignals:
    """Context manager installing stop-request handlers, restoring the previous ones on exit."""

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM), grace_seconds: float = 1.0):
        self.signals = tuple(signals)
        self.grace_seconds = grace_seconds
        self.received: Optional[str] = None
        self._first_time = 0.0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.received is None:
            self.received, self._first_time = name, now
            logger.warning("Received %s: finishing the current iteration, then saving a checkpoint and stopping "
                           "(send it again after %.0fs to abort immediately)", name, self.grace_seconds)
            return
        if now - self._first_time < self.grace_seconds:
            return
        logger.error("Received %s again: aborting without saving", name)
        self._restore()
        raise KeyboardInterrupt(f"aborted by a repeated {name}")

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        else:
            logger.debug("not in the main thread: SIGINT/SIGTERM keep their default behaviour")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def ignore_stop_signals() -> None:
    """Ignore SIGINT/SIGTERM in this process (for data-loader workers; see the module docstring)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
