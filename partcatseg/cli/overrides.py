"""Command lines with detectron2-style ``KEY.NAME VALUE`` config overrides next to their options."""
from __future__ import annotations

import argparse
import re
from typing import Sequence

from .errors import UsageError

__all__ = ["split_opts", "parse_with_overrides"]

_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_opts(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate config overrides (``KEY.NAME VALUE`` pairs, anywhere on the line, or all after ``--opts``)."""
    argv = list(argv)
    rest: list[str] = []
    if "--opts" in argv:
        i = argv.index("--opts")
        argv, rest = argv[:i], argv[i + 1 :]
    options: list[str] = []
    opts: list[str] = []
    i = 0
    while i < len(argv):
        if _KEY_RE.match(argv[i]):
            opts += argv[i : i + 2]  # the key and its value (a missing value is reported below)
            i += 2
        else:
            options.append(argv[i])
            i += 1
    return options, opts + rest


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """``parser``'s options and the config overrides of ``argv``; an override without a value is a UsageError."""
    options, opts = split_opts(argv)
    args = parser.parse_args(options)
    opts += list(getattr(args, "opts", None) or [])
    if len(opts) % 2:
        raise UsageError(f"config overrides must be KEY VALUE pairs; got {opts}")
    return args, opts
