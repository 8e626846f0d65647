"""DistributedDataParallel wrapping with the settings the official training used."""
from __future__ import annotations

import logging
import warnings
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import comm

__all__ = ["create_ddp_model", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP/DataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, (DistributedDataParallel, nn.DataParallel)) else model


def create_ddp_model(model: nn.Module, *, find_unused_parameters: bool = True, broadcast_buffers: bool = False,
                     **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in DDP when running with more than one process; otherwise return it unchanged.

    ``find_unused_parameters=True`` is required by PartCATSeg/CAT-Seg: some trainable tensors
    (``non_object_embedding``, DINOv2's ``mask_token``) never receive gradients, which DDP
    otherwise reports as an error. ``broadcast_buffers=False`` as in the official runs.
    ``device_ids`` is set to the local GPU for CUDA models and left out for CPU models (gloo).
    """
    if comm.get_world_size() == 1 or isinstance(model, DistributedDataParallel):
        return model
    try:
        device = next(model.parameters()).device
    except StopIteration:
        raise ValueError(f"{type(model).__name__} has no parameters to synchronise with DDP") from None
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index if device.index is not None else comm.get_local_rank()])
        kwargs.setdefault("output_device", kwargs["device_ids"][0])
    with warnings.catch_warnings():
        # recent torch deprecates broadcast_buffers, but its replacement still syncs buffers at
        # construction, which broadcast_buffers=False (the official setting) does not
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        ddp = DistributedDataParallel(model, find_unused_parameters=find_unused_parameters,
                                      broadcast_buffers=broadcast_buffers, **kwargs)
    logger.info("wrapped %s in DistributedDataParallel (world size %d, %s)", type(model).__name__,
                comm.get_world_size(), device)
    return ddp
