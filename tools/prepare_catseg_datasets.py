#!/usr/bin/env python
"""Convert the ground truth of CAT-Seg's benchmarks (CAT-Seg ``datasets/prepare_*.py``).

    python tools/prepare_catseg_datasets.py voc pc59 pc459 --root $DETECTRON2_DATASETS
    python tools/prepare_catseg_datasets.py all

Datasets: coco-stuff (train2017 + val2017), ade150, ade847 (needs index_ade20k.pkl), voc (writes both
VOC-20 and VOC-20b), pc59 (needs trainval_merged.json), pc459 (needs trainval/*.mat and scipy).
See datasets/README.md for the downloads and the expected folders.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    import partcatseg  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partcatseg.data.datasets.semantic_prepare import PREPARERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+", choices=sorted(PREPARERS) + ["all"], help="what to convert")
    p.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"),
                   help="dataset root (default: $DETECTRON2_DATASETS or 'datasets')")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    names = sorted(PREPARERS) if "all" in args.datasets else args.datasets
    status = 0
    for name in names:
        try:
            written = PREPARERS[name](args.root, progress=not args.quiet)
        except (FileNotFoundError, ValueError, ImportError) as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            status = 2
            continue
        print(f"{name}: wrote {written} label files")
    return status


if __name__ == "__main__":
    from partcatseg.cli.errors import run_cli  # noqa: E402

    sys.exit(run_cli(main, None, "prepare_catseg_datasets.py"))
