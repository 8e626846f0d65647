"""Command line and per-process setup shared by ``train_net.py`` and tools (detectron2 semantics)."""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import sys
from typing import Any, Optional, Sequence

import torch

from ..runtime import tune_allocator
from . import comm
from .logger import setup_logger
from .rng import seed_all_rng, set_deterministic

__all__ = ["collect_env_info", "default_argument_parser", "default_setup"]

logger = logging.getLogger(__name__)


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's flags; trailing ``KEY VALUE`` pairs land in ``args.opts`` (config overrides)."""
    parser = argparse.ArgumentParser(
        epilog=epilog or (
            "Examples:\n"
            "  train_net.py --config-file configs/zero_shot/partcatseg_voc.yaml --num-gpus 4\n"
            "  train_net.py --config-file cfg.yaml --resume            # continue from OUTPUT_DIR/last_checkpoint\n"
            "  train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS weights/model.pth\n"
            "  train_net.py --config-file cfg.yaml --num-gpus 2 MODEL.DEVICE cpu   # 2 gloo CPU processes\n"
            "  torchrun --nproc_per_node 4 train_net.py --config-file cfg.yaml     # torchrun is detected"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config YAML")
    parser.add_argument("--resume", action="store_true",
                        help="resume from OUTPUT_DIR/last_checkpoint if it exists (model, optimizer, scheduler, "
                             "iteration, RNG and data position); otherwise start from MODEL.WEIGHTS")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine: one per GPU with NCCL; on a machine without CUDA, "
                             "N > 1 starts N gloo CPU processes (real DDP, e.g. for testing)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 .. num_machines-1)")
    parser.add_argument("--dist-url", default="auto",
                        help="rendezvous URL, e.g. tcp://HOST:PORT (same on every machine); "
                             "'auto' = a free local port (single machine only)")
    parser.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long a DDP collective may wait for the other ranks before the job fails "
                             "(default: the config's DIST_TIMEOUT, 1800 s); applies to --num-gpus N and torchrun")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides at the end of the command as KEY VALUE pairs, "
                             "e.g. SOLVER.BASE_LR 0.0001 OUTPUT_DIR out/")
    return parser


def _version(dist_name: str) -> str:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_env_info() -> str:
    """A short table of the software and hardware this process runs on."""
    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("platform", platform.platform()),
        ("numpy", _version("numpy")),
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
        ("torchvision", _version("torchvision")),
        ("open_clip_torch", _version("open_clip_torch")),
        ("timm", _version("timm")),
        ("fvcore", _version("fvcore")),
        ("CPU threads (torch)", str(torch.get_num_threads())),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def default_setup(cfg: Any, args: Any = None, *, deterministic: bool = False,
                  logger_names: Sequence[str] = ("partcatseg", "fvcore")) -> None:
    """Per-process setup at the start of a job (call it in every process, after ``launch``).

    1. create ``OUTPUT_DIR``; log to the console (rank 0) and ``OUTPUT_DIR/log.txt``
       (``log.txt.rank{N}`` on other ranks) for the loggers in ``logger_names``;
    2. log rank/world size, environment, command-line args and the config file's contents;
    3. dump the full config to ``OUTPUT_DIR/config.yaml`` (rank 0);
    4. seed python/numpy/torch with ``SEED + rank`` (``SEED < 0``: a random seed, logged);
    5. ``torch.backends.cudnn.benchmark = CUDNN_BENCHMARK`` (not for ``--eval-only``);
       ``deterministic=True`` also forces deterministic kernels (tests, debugging);
    6. the CPU allocator policy of :func:`partcatseg.runtime.tune_allocator` (kept at glibc's
       defaults for a training job with ``MODEL.GRADIENT_CHECKPOINTING``, which asks for memory first).
    """
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
    for name in logger_names:
        setup_logger(output_dir or None, distributed_rank=rank, name=name)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    if args is not None:
        logger.info("Command line arguments: %s", args)
        config_file = getattr(args, "config_file", "")
        if config_file:
            with open(config_file, encoding="utf-8") as f:
                logger.info("Contents of args.config_file=%s:\n%s", config_file, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)
    seed = seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    logger.info("Seeded python/numpy/torch with %d (SEED=%d, rank %d)", seed, cfg.SEED, rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    if deterministic:
        set_deterministic(True, algorithms=True)
    checkpointing = bool(cfg.MODEL.get("GRADIENT_CHECKPOINTING", False)) if "MODEL" in cfg else False
    memory_first = checkpointing and not getattr(args, "eval_only", False)
    logger.info("CPU allocator: %s", tune_allocator(prefer_memory=memory_first))
