#!/usr/bin/env python
"""Validate a registered dataset split: record counts, file pairing, decodable images (truncated JPEGs
are caught), label-map sizes and label ranges against the number of classes and the ignore label.

    python tools/check_dataset.py voc_obj_part_sem_seg_val_obj_condition
    python tools/check_dataset.py toy_obj_part_sem_seg_train --root /tmp/datasets --max-records 100
    python tools/check_dataset.py --list

Exit code 0 when every check passes (warnings allowed), 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import partcatseg  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partcatseg.data.catalog import DatasetCatalog  # noqa: E402
from partcatseg.data.datasets import set_dataset_root  # noqa: E402
from partcatseg.data.datasets.check import check_dataset, format_report, has_failures  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="registered dataset name(s)")
    p.add_argument("--root", default=None, help="dataset root (default: $DETECTRON2_DATASETS or 'datasets')")
    p.add_argument("--max-records", type=int, default=None, help="decode only the first N records")
    p.add_argument("--list", action="store_true", help="list the registered dataset names and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(DatasetCatalog.list()))
        return 0
    if not args.names:
        p.error("give at least one dataset NAME (or --list)")
    if args.root is not None:
        set_dataset_root(args.root)
    failed = False
    for name in args.names:
        results = check_dataset(name, max_records=args.max_records, progress=not args.quiet)
        print(format_report(name, results))
        failed |= has_failures(results)
    return 1 if failed else 0


if __name__ == "__main__":
    from partcatseg.cli.errors import run_cli  # noqa: E402

    sys.exit(run_cli(main, None, "check_dataset.py"))
