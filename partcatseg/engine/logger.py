"""Logging setup: console on the main process, ``log.txt`` (``log.txt.rank{N}`` elsewhere) in OUTPUT_DIR."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

__all__ = ["setup_logger"]

_FMT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"
_MARK = "_partcatseg_handler"


def setup_logger(output: Optional[str] = None, distributed_rank: int = 0, name: str = "partcatseg",
                 level: int = logging.DEBUG) -> logging.Logger:
    """Configure logger ``name``: INFO to stdout on rank 0, DEBUG to a file when ``output`` is given.

    ``output`` ending in .txt/.log is the file; otherwise it is a directory holding ``log.txt``.
    Calling it again replaces the handlers it installed before (no duplicated lines).
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, _MARK, False):
            logger.removeHandler(h)
            h.close()
    formatter = logging.Formatter(_FMT, datefmt=_DATEFMT)
    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(formatter)
        setattr(console, _MARK, True)
        logger.addHandler(console)
    if output:
        path = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            path = f"{path}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fh = logging.FileHandler(path, mode="a")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(formatter)
        setattr(fh, _MARK, True)
        logger.addHandler(fh)
    return logger
