"""``tools/download_weights.py``: download, verify, list or install-from-file the released checkpoints."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .errors import run_cli
from ..weights import (
    WEIGHTS,
    WEIGHTS_DIR_ENV,
    WeightsError,
    WeightsVerificationError,
    copy_into_place,
    download,
    verify_file,
    weights_dir,
)

__all__ = ["main"]


def main(argv: Optional[list] = None) -> int:
    """``tools/download_weights.py`` (see :func:`_main`), through the common error path."""
    return run_cli(_main, argv, "download_weights.py")


def _main(argv: list) -> int:
    """``tools/download_weights.py``: download / verify / list / install-from-file named checkpoints."""
    parser = argparse.ArgumentParser(
        prog="download_weights.py",
        description="Download released PartCATSeg / CAT-Seg checkpoints into the weights directory, verified.",
    )
    parser.add_argument("names", nargs="*", help=f"weights to fetch: {', '.join(WEIGHTS)}")
    parser.add_argument("--dir", default=None, help=f"target directory (default: ${WEIGHTS_DIR_ENV} or {weights_dir()})")
    parser.add_argument("--list", action="store_true", help="print the table of released weights and what is present")
    parser.add_argument("--verify", action="store_true", help="verify the files already present (all, or the names given)")
    parser.add_argument("--force", action="store_true", help="fetch again even if a verified file is present")
    parser.add_argument("--offline", action="store_true", help="do not download; print what to fetch by hand")
    parser.add_argument("--from-file", help="install this local file as NAME (one name), then verify it")
    args = parser.parse_args(argv)
    directory = weights_dir(args.dir)

    unknown = [n for n in args.names if n not in WEIGHTS]
    if unknown:
        print(f"download_weights.py: error: unknown name(s) {unknown}; known: {sorted(WEIGHTS)}", file=sys.stderr)
        return 2
    if args.list or not (args.names or args.verify):
        print(f"weights directory: {directory}\n")
        for spec in WEIGHTS.values():
            present = (directory / spec.filename).is_file()
            state = "present" if present else ("not released" if not spec.available else "missing")
            print(f"  {spec.name:<26} {spec.filename:<36} {state:<12} {spec.description}")
        if not args.list:  # a bare call: say how to fetch (--list prints the table only)
            print("\nfetch with: python tools/download_weights.py NAME [NAME ...]   (--help for options)")
        return 0
    if args.from_file:
        if len(args.names) != 1:
            print("download_weights.py: error: --from-file needs exactly one NAME", file=sys.stderr)
            return 2
        spec = WEIGHTS[args.names[0]]
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / spec.filename
        copy_into_place(os.path.expanduser(args.from_file), target)
        try:
            sha = verify_file(spec, target)
        except WeightsVerificationError as err:
            print(f"{spec.name}: {err}", file=sys.stderr)
            return 1
        print(f"{spec.name}: installed {target} (sha256 {sha})")
        return 0
    status = 0
    if args.verify:
        names = args.names or [s.name for s in WEIGHTS.values() if (directory / s.filename).is_file()]
        for name in names:
            spec = WEIGHTS[name]
            path = directory / spec.filename
            if not path.is_file():
                print(f"{name}: missing ({path})")
                status = 1
                continue
            try:
                print(f"{name}: ok (sha256 {verify_file(spec, path)})")
            except WeightsVerificationError as err:
                print(f"{name}: FAILED: {err}", file=sys.stderr)
                status = 1
        return status
    for name in args.names:
        try:
            download(name, directory, force=args.force, offline=True if args.offline else None)
        except WeightsError as err:
            print(str(err), file=sys.stderr)
            status = 1
    return status
