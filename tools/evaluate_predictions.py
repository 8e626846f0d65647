#!/usr/bin/env python
"""Score another method's label-map PNGs under exactly the protocol train_net.py uses.

    python tools/evaluate_predictions.py --dataset voc_obj_part_sem_seg_val_obj_condition \\
        --predictions preds/ --output results/

Folder layout and file naming: ``partcatseg/evaluation/predictions.py`` (``preds/pred_all/<name>.png``
and optionally ``preds/oracle_obj/<name>.png``; ``<name>`` = image stem [+ ``_obj<k>``]).  Prints the
Oracle-Obj / Pred-All table (seen / unseen / h-IoU, both metric definitions) and writes JSON + CSV.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import partcatseg  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
# the official config whose INPUT.* settings (test resize, mapper) belong to each dataset family
FAMILY_CONFIGS = {
    "voc_": "configs/zero_shot/partcatseg_voc.yaml",
    "toy_": "configs/toy/partcatseg_toy.yaml",
    "ade_": "configs/zero_shot/partcatseg_ade.yaml",
    "partimagenet_ood_": "configs/zero_shot/partcatseg_partimagenet_ood.yaml",
    "partimagenet_": "configs/zero_shot/partcatseg_partimagenet.yaml",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="registered part test split, e.g. voc_obj_part_sem_seg_val_obj_condition")
    p.add_argument("--predictions", required=True, help="folder with pred_all/ (and optionally oracle_obj/)")
    p.add_argument("--output", default=None, help="where to write part_seg_results.json / part_seg_per_class.csv")
    p.add_argument("--config-file", default=None, help="config whose INPUT.* test settings apply (default: by dataset)")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip (and report) records whose prediction is missing/unreadable instead of stopping")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from partcatseg.config import setup_cfg
    from partcatseg.data import build_mapper
    from partcatseg.evaluation.predictions import evaluate_prediction_dir
    from partcatseg.evaluation.tables import summary_table

    config = args.config_file or next((c for k, c in FAMILY_CONFIGS.items() if args.dataset.startswith(k)), None)
    if config is None:
        p.error(f"no default config for dataset {args.dataset!r}; pass --config-file")
    cfg = setup_cfg(str(REPO / config) if not Path(config).is_file() else config,
                    ["DATASETS.TEST", f"('{args.dataset}',)", "MODEL.DEVICE", "cpu"])
    mapper = build_mapper(cfg, is_train=False, dataset_name=args.dataset)
    try:
        results = evaluate_prediction_dir(args.dataset, args.predictions, mapper, args.output, args.skip_bad_records)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate_predictions: error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(results))
    if results["oracle_obj_source"] == "pred_all":
        print("(no oracle_obj/ folder: Oracle-Obj computed from the Pred-All maps)")
    if results["num_skipped_records"]:
        print(f"{results['num_skipped_records']} record(s) skipped (see the log above)")
    return 0


if __name__ == "__main__":
    from partcatseg.cli.errors import run_cli  # noqa: E402

    sys.exit(run_cli(main, None, "evaluate_predictions.py"))
