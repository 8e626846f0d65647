#!/usr/bin/env python
"""List the label ids present in every label PNG of a folder (the official ``mask_cls_collect.py``).

Pascal-Part-116 needs the object ids per image for the object-conditioned splits:

    python tools/collect_mask_labels.py \\
        $DETECTRON2_DATASETS/PascalPart116/annotations_detectron2_obj/val \\
        $DETECTRON2_DATASETS/PascalPart116/annotations_detectron2_part/val_obj_label_count.json

Output: compact JSON {png basename: [ids]} without the ignore value(s) (default 255).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import partcatseg  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partcatseg.data.datasets.common import collect_mask_labels  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gt_dir", help="folder of label images (not recursive)")
    p.add_argument("out_json", help="output json path")
    p.add_argument("--ignore", type=int, nargs="*", default=[255], help="label values to leave out (default 255)")
    p.add_argument("--ext", default=".png", help="label file extension (default .png)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = in-process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        result = collect_mask_labels(args.gt_dir, args.out_json, ignore=args.ignore, ext=args.ext,
                                     num_workers=args.workers, progress=not args.quiet)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(result)} label files -> {args.out_json}")
    return 0


if __name__ == "__main__":
    from partcatseg.cli.errors import run_cli  # noqa: E402

    sys.exit(run_cli(main, None, "collect_mask_labels.py"))
