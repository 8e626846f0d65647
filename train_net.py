#!/usr/bin/env python
"""Train and evaluate PartCATSeg / CAT-Seg with detectron2's command line.

    python train_net.py --config-file configs/zero_shot/partcatseg_voc.yaml --num-gpus 4
    python train_net.py --config-file configs/zero_shot/partcatseg_voc.yaml --eval-only MODEL.WEIGHTS partcatseg_voc
    python train_net.py --config-file configs/toy/partcatseg_toy.yaml MODEL.DEVICE cpu     # the toy demo
    torchrun --nproc_per_node 4 train_net.py --config-file ...                              # torchrun works too

Exit status: 0 on success and after SIGINT/SIGTERM (a checkpoint was saved); 2 for a mistake in the
command line or the config (one line says what and where; checked before any model is built or any
process started: config, device, model, weights file, datasets); 1 for a failure while working (a
corrupt checkpoint, a bad record, NaN/inf, a collective timeout); 3 when the progress watchdog stopped
the job (SOLVER.WATCHDOG_SECONDS; the last line says which rank stalled). ``--debug`` (or
``PARTCATSEG_DEBUG=1``) shows tracebacks for user errors too.
"""
from __future__ import annotations

import logging
import os
import sys
from functools import partial

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from partcatseg.checkpoint import Checkpointer, CheckpointError  # noqa: E402
from partcatseg.cli.errors import debug_requested, describe_error, run_cli  # noqa: E402
from partcatseg.config import setup_cfg  # noqa: E402
from partcatseg.engine import Trainer, default_argument_parser, default_setup, launch  # noqa: E402
from partcatseg.engine.launch import WorkerFailedError, as_timeout  # noqa: E402
from partcatseg.engine.ddp import unwrap_model  # noqa: E402
from partcatseg.engine.preflight import preflight  # noqa: E402
from partcatseg.engine.rng import seed_all_rng  # noqa: E402
from partcatseg.engine.runner import evaluate, train_loader_from_config  # noqa: E402
from partcatseg.modeling import build_model  # noqa: E402
from partcatseg.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("partcatseg.train_net")


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
                raise CheckpointError(f"nothing from {weights} matched the model ({type(model).__name__})")
        else:
            logger.warning("Evaluating a randomly initialised model (MODEL.WEIGHTS is empty)")
        return evaluate(cfg, model)

    test_function = (lambda: evaluate(cfg, unwrap_model(trainer.model))) if cfg.DATASETS.TEST else None
    trainer = Trainer.from_config(cfg, model, None, test_function=test_function)
    trainer.resume_or_load(resume=args.resume, weights=weights)
    # decided after the load: a resume that found no loadable checkpoint started from MODEL.WEIGHTS
    resuming = args.resume and trainer.checkpointer.has_checkpoint()
    if not resuming:
        # training from scratch: pretrained encoders for whatever MODEL.WEIGHTS did not provide (the
        # official code downloads them at construction; here they load after the checkpoint)
        report = trainer.checkpointer.last_report if weights else None
        unwrap_model(trainer.model).load_pretrained(report.missing if report is not None else None)
    trainer.data_loader = train_loader_from_config(cfg, start_iter=trainer.start_iter)
    results = trainer.train()
    if trainer.interrupted:
        logger.info("Interrupted; resume with --resume (OUTPUT_DIR=%s)", cfg.OUTPUT_DIR)
        return None
    return results


def cli(argv=None) -> int:
    """The command line (user errors: one line and an exit status, see the module docstring)."""
    return run_cli(_cli, argv, "train_net.py")


def _cli(argv) -> int:
    parser = default_argument_parser()
    parser.add_argument("--skip-bad-records", action="store_true",
                        help="skip unreadable/corrupt records instead of stopping, in evaluation (reported by name, "
                             "TEST.SKIP_BAD_RECORDS) and in training (replaced by a deterministic draw, listed in "
                             "OUTPUT_DIR/skipped_train_records.json, at most DATALOADER.MAX_BAD_RECORDS)")
    args = parser.parse_args(argv)
    if args.skip_bad_records:
        args.opts = list(args.opts) + ["TEST.SKIP_BAD_RECORDS", "True", "DATALOADER.SKIP_BAD_RECORDS", "True"]
    if args.dist_timeout is not None:
        as_timeout(args.dist_timeout, "--dist-timeout")
        args.opts = list(args.opts) + ["DIST_TIMEOUT", str(float(args.dist_timeout))]
    # everything a user can get wrong, before any model is built or process started
    cfg = setup_cfg(args.config_file, args.opts + (["EVAL_ONLY", "True"] if args.eval_only else []))
    preflight(cfg, eval_only=args.eval_only, num_processes=args.num_gpus)
    # the collective timeout is needed before any process group exists: read it from the config here
    timeout = as_timeout(cfg.DIST_TIMEOUT, "DIST_TIMEOUT")
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,), timeout=timeout,
               describe_error=None if debug_requested(argv) else partial(describe_error, prog="train_net.py"))
    except WorkerFailedError as exc:  # a worker's one-line report (the watchdog, or a user-facing error)
        print(exc, file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli())
