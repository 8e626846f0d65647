#!/usr/bin/env python
"""Generate the synthetic toy part dataset (Pascal-Part-116 layout) for tests, demos and CI.

    python tools/make_toy_dataset.py                       # -> $DETECTRON2_DATASETS/ToyPart
    python tools/make_toy_dataset.py --out /tmp/ToyPart --seed 1 --num-train 100 --num-val 30 --size 128

Registered as toy_obj_part_sem_seg_{train,val}[_obj_condition] (root: $DETECTRON2_DATASETS/ToyPart).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

try:
    import partcatseg  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partcatseg.data.datasets.toy import TOY_FOLDER, make_toy_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    default_out = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), TOY_FOLDER)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> byte-identical files")
    p.add_argument("--num-train", type=int, default=40, help="training images")
    p.add_argument("--num-val", type=int, default=16, help="validation images")
    p.add_argument("--size", type=int, default=96, help="image height in pixels (width = 4/3 of it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing toy dataset in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        summary = make_toy_dataset(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                                   size=args.size, overwrite=args.overwrite, progress=not args.quiet)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    from partcatseg.cli.errors import run_cli  # noqa: E402

    sys.exit(run_cli(main, None, "make_toy_dataset.py"))
