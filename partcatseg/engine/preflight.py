"""What a job needs, checked before any model is built or any process is started.

A missing dataset used to be reported after the 178M-parameter model was built (44 s), a CUDA device
on a machine without one deep inside torch. :func:`preflight` checks the device, the model's
registration (plugins imported), the weights file and the datasets, each with one clear message.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from ..checkpoint import checkpoint_problem
from ..config import ConfigError, resolve_device, resolve_micro_batches
from ..data import DatasetCatalog, MetadataCatalog
from ..data.datasets.common import DatasetFilesError
from ..modeling import meta_architecture_class
from ..weights import resolve_weights

__all__ = ["preflight", "check_device", "check_weights", "check_datasets"]

logger = logging.getLogger(__name__)


def check_device(cfg: Any, num_processes: int = 1) -> str:
    """``MODEL.DEVICE`` resolved; CUDA asked for on a machine without it (or too few GPUs) is a ConfigError."""
    import torch

    device = resolve_device(cfg)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but CUDA is not available on this machine "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use MODEL.DEVICE cpu or auto"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        needed = max(index + 1, num_processes)
        if torch.cuda.device_count() < needed:
            raise ConfigError(
                f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} with {num_processes} process(es) needs {needed} GPU(s); "
                f"this machine has {torch.cuda.device_count()}"
            )
    return device


def check_weights(value: str) -> str:
    """``MODEL.WEIGHTS`` resolved to a file that looks complete ("" = none)."""
    path = resolve_weights(value)
    if path:
        problem = checkpoint_problem(path)
        if problem:
            from ..checkpoint import CheckpointError

            raise CheckpointError(f"MODEL.WEIGHTS={value!r}: the file {path} {problem}")
    return path


def check_datasets(names: Sequence[str], what: str) -> None:
    """Every dataset is registered, prepared on disk and not empty (listing only; images are not read)."""
    for name in names:
        if name not in DatasetCatalog:
            raise ConfigError(
                f"{what}: dataset {name!r} is not registered; built-in names are listed in datasets/README.md "
                f"(your own: register it in a module listed in MODEL.PLUGINS)"
            )
        records = DatasetCatalog.get(name)  # raises DatasetFilesError naming what is missing
        if not records:
            meta = MetadataCatalog.get(name)
            where = ", ".join(str(meta.get(k)) for k in ("image_root", "sem_seg_root") if meta.get(k))
            raise DatasetFilesError(f"{what}: dataset {name!r} has no records ({where or 'no paths registered'})")


def preflight(cfg: Any, *, eval_only: bool, num_processes: int = 1) -> None:
    """Device, model registration, weights and datasets of a ``train_net.py`` job, before anything heavy."""
    check_device(cfg, num_processes)
    meta_architecture_class(cfg)
    check_weights(cfg.MODEL.WEIGHTS)
    if not eval_only:
        if not cfg.DATASETS.TRAIN:
            raise ConfigError("DATASETS.TRAIN is empty: nothing to train on")
        check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        resolve_micro_batches(cfg, num_processes)  # the batch splits evenly over processes and micro-batches
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    logger.debug("preflight passed")
