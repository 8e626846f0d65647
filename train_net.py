#!/usr/bin/env python
"""Train and evaluate PartCATSeg / CAT-Seg with detectron2's command line.

    python train_net.py --config-file configs/zero_shot/partcatseg_voc.yaml --num-gpus 4
    python train_net.py --config-file configs/zero_shot/partcatseg_voc.yaml --eval-only MODEL.WEIGHTS partcatseg_voc
    python train_net.py --config-file configs/toy/partcatseg_toy.yaml MODEL.DEVICE cpu     # the toy demo
    torchrun --nproc_per_node 4 train_net.py --config-file ...                              # torchrun works too
"""
from __future__ import annotations

import logging
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from partcatseg.checkpoint import Checkpointer  # noqa: E402
from partcatseg.config import setup_cfg  # noqa: E402
from partcatseg.engine import Trainer, default_argument_parser, default_setup, launch  # noqa: E402
from partcatseg.engine.ddp import unwrap_model  # noqa: E402
from partcatseg.engine.rng import seed_all_rng  # noqa: E402
from partcatseg.engine.runner import evaluate, train_loader_from_config  # noqa: E402
from partcatseg.modeling import build_model  # noqa: E402
from partcatseg.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("partcatseg.train_net")


def fill_pretrained_encoders(cfg, model, report) -> None:
    """Training from scratch: pretrained DINOv2 / CLIP for whatever MODEL.WEIGHTS did not provide.

    The official code builds DINOv2 from torch.hub and CLIP from OpenAI's file, then loads the
    checkpoint over them; loading the checkpoint first and filling the gaps gives the same weights.
    """
    from partcatseg.modeling.clip import OPENAI_CLIP_WEIGHTS, load_clip_weights
    from partcatseg.modeling.dinov2 import load_dinov2_weights

    net = unwrap_model(model)
    missing = set(report.missing) if report is not None else None  # None: no checkpoint at all

    def not_provided(prefix: str) -> bool:
        keys = [k for k in net.state_dict() if k.startswith(prefix) and not k.endswith("mask_token")]
        return bool(keys) and (missing is None or all(k in missing for k in keys))

    backbone = getattr(net, "backbone", None)
    if cfg.MODEL.DINO_WEIGHTS and hasattr(backbone, "dinov2") and not_provided("backbone.dinov2."):
        path = resolve_weights(cfg.MODEL.DINO_WEIGHTS)
        load_dinov2_weights(backbone, path)
        logger.info("Loaded pretrained DINOv2 from %s", path)
    clip_name = cfg.MODEL.CLIP_WEIGHTS
    if clip_name == "auto":
        clip_name = "" if cfg.MODEL.CLIP_ARCH == "tiny" else OPENAI_CLIP_WEIGHTS.get(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED, "")
    if clip_name and not_provided("sem_seg_head.predictor.clip_model."):
        path = resolve_weights(clip_name)
        load_clip_weights(net.sem_seg_head.predictor.clip_model, path)
        logger.info("Loaded pretrained CLIP from %s", path)


def main(args):
    cfg = setup_cfg(args.config_file, args.opts + (["EVAL_ONLY", "True"] if args.eval_only else []))
    default_setup(cfg, args)
    if cfg.SEED >= 0:
        # part-catseg seeds every rank identically right before building the model
        seed_all_rng(cfg.SEED)
    model = build_model(cfg)
    weights = resolve_weights(cfg.MODEL.WEIGHTS)

    if args.eval_only:
        checkpointer = Checkpointer(model, cfg.OUTPUT_DIR)
        if args.resume and checkpointer.has_checkpoint():
            checkpointer.resume_or_load(weights, resume=True)
        elif weights:
            report = checkpointer.load_weights(weights)
            if not report.loaded:
                raise RuntimeError(f"nothing from {weights} matched the model")
        else:
            logger.warning("Evaluating a randomly initialised model (MODEL.WEIGHTS is empty)")
        return evaluate(cfg, model)

    test_function = (lambda: evaluate(cfg, unwrap_model(trainer.model))) if cfg.DATASETS.TEST else None
    trainer = Trainer.from_config(cfg, model, None, test_function=test_function)
    resuming = args.resume and trainer.checkpointer.has_checkpoint()
    trainer.resume_or_load(resume=args.resume, weights=weights)
    if not resuming:
        fill_pretrained_encoders(cfg, trainer.model, trainer.checkpointer.last_report if weights else None)
    trainer.data_loader = train_loader_from_config(cfg, start_iter=trainer.start_iter)
    results = trainer.train()
    if trainer.interrupted:
        logger.info("Interrupted; resume with --resume (OUTPUT_DIR=%s)", cfg.OUTPUT_DIR)
        return None
    return results


def cli(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--skip-bad-records", action="store_true",
                        help="evaluation skips unreadable/corrupt records (reported by name) instead of stopping")
    args = parser.parse_args(argv)
    if args.skip_bad_records:
        args.opts = list(args.opts) + ["TEST.SKIP_BAD_RECORDS", "True"]
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
