"""Turning the framework's "auto"/empty config values into concrete choices, and checking them.

Kept apart from the defaults so that consumers (model builders, trainers, tools) share one
interpretation of e.g. ``MODEL.DEVICE: auto``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .defaults import AMP_MODES, CATSEG_VARIANTS, DEVICE_CHOICES_HELP
from .errors import ConfigError

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEFAULT_TEXT_CACHE_DIR = "~/.cache/partcatseg/text_features"


def resolve_device(cfg_or_device: Any) -> str:
    """``MODEL.DEVICE`` as a torch device string: "auto" -> "cuda" if available else "cpu"."""
    device = cfg_or_device if isinstance(cfg_or_device, str) else cfg_or_device.MODEL.DEVICE
    if device != "auto":
        return device
    import torch  # deferred: reading a config must not require importing torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_catseg_variant(cfg: Any) -> str:
    """``MODEL.CATSEG_VARIANT`` with "auto" decided by the backbone name and ``BG_ON``."""
    variant = cfg.MODEL.CATSEG_VARIANT
    if variant != "auto":
        return variant
    # part-catseg's baseline has DINOv2 guidance (catseg_voc) or a ResNet with a background class
    # (catseg_ade / _partimagenet); CAT-Seg CVPR has neither.
    baseline = cfg.MODEL.BACKBONE.NAME == "DINOv2Backbone" or bool(cfg.MODEL.SEM_SEG_HEAD.BG_ON)
    return "partcatseg_baseline" if baseline else "cvpr2024"


def resolve_micro_batches(cfg: Any, world_size: int) -> tuple[int, int]:
    """``(images per micro-batch, micro-batches per optimizer step)`` of each of ``world_size`` processes.

    ``SOLVER.IMS_PER_BATCH`` is the batch of one optimizer step over all processes;
    ``SOLVER.MICRO_BATCH_SIZE`` (0 = IMS_PER_BATCH / world_size) the images of one forward/backward.
    """
    total, micro = int(cfg.SOLVER.IMS_PER_BATCH), int(cfg.SOLVER.MICRO_BATCH_SIZE)
    world_size = max(int(world_size), 1)
    if total <= 0 or total % world_size:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH={total} must be a positive multiple of the number of processes "
                          f"({world_size}): every process takes the same share of the batch")
    per_process = total // world_size
    if micro < 0:
        raise ConfigError(f"SOLVER.MICRO_BATCH_SIZE={micro}: expected 0 (no accumulation) or a positive int")
    if micro == 0:
        return per_process, 1
    if per_process % micro:
        raise ConfigError(
            f"SOLVER.MICRO_BATCH_SIZE={micro} must divide the images per process, SOLVER.IMS_PER_BATCH / processes "
            f"= {total} / {world_size} = {per_process} (the optimizer step sees IMS_PER_BATCH images)")
    return micro, per_process // micro


def resolve_meta_architecture(cfg: Any) -> str:
    """The registered class ``MODEL.META_ARCHITECTURE`` names.

    The official configs call both CAT-Seg generations "CATSeg"; part-catseg's baseline (see
    :func:`resolve_catseg_variant`) is registered as "CATSegBaseline".
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name == "CATSeg" and resolve_catseg_variant(cfg) == "partcatseg_baseline":
        return "CATSegBaseline"
    return name


def resolve_text_cache_dir(cfg: Any) -> Path:
    """``MODEL.TEXT_CACHE_DIR`` with "" meaning ``~/.cache/partcatseg/text_features``."""
    return Path(os.path.expanduser(cfg.MODEL.TEXT_CACHE_DIR or DEFAULT_TEXT_CACHE_DIR))


# (key, lower bound, strict) of training/evaluation values whose wrong sign or zero only fails deep
# inside torch (e.g. AdamW's "Invalid learning rate: -1.0", without the key).
_RANGES = (
    ("SOLVER.BASE_LR", 0.0, False),
    ("SOLVER.MAX_ITER", 0, True),
    ("SOLVER.IMS_PER_BATCH", 0, True),
    ("SOLVER.CHECKPOINT_PERIOD", 0, True),
    ("SOLVER.WEIGHT_DECAY", 0.0, False),
    ("SOLVER.MOMENTUM", 0.0, False),
    ("SOLVER.WARMUP_ITERS", 0, False),
    ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.0, False),
    ("DATALOADER.NUM_WORKERS", 0, False),
    ("TEST.EVAL_PERIOD", 0, False),
    ("TEST.IMS_PER_BATCH", 0, True),
)


def _range_problems(cfg: Any) -> list[str]:
    problems = []
    for key, low, strict in _RANGES:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if (node <= low) if strict else (node < low):
            problems.append(f"{key}={node!r}: expected a {'positive' if strict else 'non-negative'} number")
    return problems


def validate_framework_keys(cfg: Any) -> None:
    """Reject out-of-range values of the framework's own keys (official keys are left to consumers)."""
    problems = []
    if not _DEVICE_RE.match(str(cfg.MODEL.DEVICE)):
        problems.append(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r}: expected {DEVICE_CHOICES_HELP}")
    if cfg.MODEL.CATSEG_VARIANT not in CATSEG_VARIANTS:
        problems.append(f"MODEL.CATSEG_VARIANT={cfg.MODEL.CATSEG_VARIANT!r}: expected one of {list(CATSEG_VARIANTS)}")
    if cfg.SOLVER.AMP.DTYPE not in AMP_MODES[1:]:
        problems.append(f"SOLVER.AMP.DTYPE={cfg.SOLVER.AMP.DTYPE!r}: expected one of {list(AMP_MODES[1:])}")
    if cfg.TEST.AMP not in AMP_MODES:
        problems.append(f"TEST.AMP={cfg.TEST.AMP!r}: expected one of {list(AMP_MODES)} ('' = fp32)")
    if cfg.TEST.CLASS_CHUNK < 0:
        problems.append(f"TEST.CLASS_CHUNK={cfg.TEST.CLASS_CHUNK!r}: expected 0 (off) or a positive int")
    if cfg.SOLVER.MICRO_BATCH_SIZE < 0:
        problems.append(f"SOLVER.MICRO_BATCH_SIZE={cfg.SOLVER.MICRO_BATCH_SIZE!r}: expected 0 (no accumulation) or "
                        "a positive int")
    elif cfg.SOLVER.MICRO_BATCH_SIZE > 0 and cfg.SOLVER.IMS_PER_BATCH % cfg.SOLVER.MICRO_BATCH_SIZE:
        problems.append(f"SOLVER.MICRO_BATCH_SIZE={cfg.SOLVER.MICRO_BATCH_SIZE!r}: expected a divisor of "
                        f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH!r}")
    if cfg.MODEL.DINO_INPUT_SIZE <= 0:
        problems.append(f"MODEL.DINO_INPUT_SIZE={cfg.MODEL.DINO_INPUT_SIZE!r}: expected a positive int")
    problems += _range_problems(cfg)
    if len(problems) == 1:
        raise ConfigError(f"Invalid config value {problems[0]}")
    if problems:
        raise ConfigError("Invalid config values:\n  " + "\n  ".join(problems))
