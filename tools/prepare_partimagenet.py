#!/usr/bin/env python
"""Prepare PartImageNet (Seg) in place, as the official ``datasets/partimagenet_preprocess.py`` does.

Download ``PartImageNet_Seg`` (https://github.com/TACJu/PartImageNet), extract it as
``$DETECTRON2_DATASETS/PartImageNet`` (images/{train,val}, annotations/{train,val} with the jsons), then:

    python tools/prepare_partimagenet.py --data-dir $DETECTRON2_DATASETS/PartImageNet \\
        [--synset-mapping LOC_synset_mapping.txt] [--dry-run]

It DELETES the images/annotation PNGs of the objects that are not used (train keeps the 25 base objects,
val all 40) and writes PartImageNet/{train,val}.json. ``LOC_synset_mapping.txt`` (Kaggle ImageNet
localization challenge) is optional: the same synset names are packaged with partcatseg.
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

from partcatseg.data.datasets.partimagenet_prepare import preprocess_partimagenet  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    default = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "PartImageNet")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=default, help=f"extracted PartImageNet_Seg folder (default: {default})")
    p.add_argument("--synset-mapping", default=None, help="LOC_synset_mapping.txt (default: packaged table)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    args = p.parse_args(argv)
    try:
        report = preprocess_partimagenet(args.data_dir, args.synset_mapping, dry_run=args.dry_run)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from partcatseg.cli.errors import run_cli  # noqa: E402

    sys.exit(run_cli(main, None, "prepare_partimagenet.py"))
