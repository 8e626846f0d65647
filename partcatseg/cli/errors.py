"""One error path for every command line.

A user's mistake (a config typo, a missing file, a dataset that is not prepared, a bad vocabulary,
a checkpoint that does not fit) is reported in one or two lines — what is wrong, where, what to do.
Exit status 2: the command line or the config names something wrong or absent (a key, a value, a
vocabulary, an input file, a weights file, a dataset that is not prepared). Exit status 1: a failure
while working (a corrupt or unsafe checkpoint, a failed download, a bad dataset record, a full disk,
no permission). A genuine bug keeps its traceback. ``--debug`` (on any of our command lines) or
``PARTCATSEG_DEBUG=1`` shows the traceback for user errors too.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ["UsageError", "USAGE_EXIT", "RUNTIME_EXIT", "DEBUG_ENV", "classify", "describe_error", "format_error",
           "run_cli", "debug_requested"]

USAGE_EXIT = 2
RUNTIME_EXIT = 1
DEBUG_ENV = "PARTCATSEG_DEBUG"


class UsageError(Exception):
    """A wrong command line or option value (exit status 2)."""


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def classify(err: BaseException) -> Optional[str]:
    """"usage" (exit 2), "runtime" (exit 1) for a user-facing error, None for a bug (traceback)."""
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data.datasets.common import DatasetFilesError
    from ..data.mappers import BadRecordError
    from ..vocab import VocabularyError
    from ..weights import WeightsError, WeightsNotFoundError

    if isinstance(err, (UsageError, ConfigError, VocabularyError, WeightsNotFoundError, DatasetFilesError)):
        return "usage"
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return "usage"
    if isinstance(err, (CheckpointError, WeightsError, BadRecordError, PermissionError)):
        return "runtime"
    from ..engine.comm import CollectiveTimeoutError
    from ..engine.train_loop import TooManyBadRecordsError

    # training stopped on purpose, with a message that names the iteration and the last checkpoint
    if isinstance(err, (FloatingPointError, CollectiveTimeoutError, TooManyBadRecordsError)):
        return "runtime"
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return "runtime"
    return None


def format_error(err: BaseException) -> str:
    """The one or two lines a user sees."""
    from ..data.datasets.common import DatasetFilesError

    if isinstance(err, DatasetFilesError) and err.fix:
        return f"{err.summary}\n  to prepare it: {err.fix}"
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename:
        return f"no space left on the device of {err.filename} ({err.strerror}); free some space and run again"
    if isinstance(err, OSError) and type(err) in (FileNotFoundError, PermissionError) and err.filename:
        return f"{err.strerror}: {err.filename}"
    return str(err).strip() or type(err).__name__


def describe_error(err: BaseException, prog: str) -> Optional[tuple]:
    """``(exit_status, "PROG: error: ...")`` for a user-facing error, ``None`` for a bug.

    The same line :func:`run_cli` prints; spawned DDP workers report it through
    ``launch(describe_error=...)`` so a multi-process job ends like a single-process one.
    """
    kind = classify(err)
    if kind is None:
        return None
    return (USAGE_EXIT if kind == "usage" else RUNTIME_EXIT), f"{prog}: error: {format_error(err)}"


def run_cli(main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]], prog: str) -> int:
    """Run ``main(argv)`` (``--debug`` removed) and turn user errors into a message and an exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    previous = os.environ.get(DEBUG_ENV)
    if "--debug" in argv:
        os.environ[DEBUG_ENV] = "1"  # while main runs: spawned DDP workers keep their tracebacks too
    argv = [a for a in argv if a != "--debug"]
    try:
        try:
            status = main(argv)
        finally:
            if previous is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = previous
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - classified below; bugs are re-raised with their traceback
        described = describe_error(err, prog)
        if described is None or debug:
            raise
        print(described[1], file=sys.stderr)
        return described[0]
    return 0 if status is None else int(status)
