"""Pretrained encoders for training from scratch: what the official code downloads at construction.

The official models build DINOv2 from torch.hub and CLIP from OpenAI's file, then load the training
checkpoint (e.g. CAT-Seg's ``model_final_base.pth``) over them. Loading the checkpoint first and then
filling only the components it did not provide gives the same weights without any download at
construction. A meta-architecture lists its components (checkpoint prefix, module, weights name,
loader) and :func:`fill_pretrained` does the rest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Collection, Optional

from torch import nn

__all__ = ["PretrainedComponent", "fill_pretrained", "clip_and_dinov2"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedComponent:
    """One encoder: its checkpoint key prefix, the module, the weights (registry name or path) and a loader."""

    prefix: str
    module: nn.Module
    weights: str
    load: Callable[[nn.Module, str], object]


def fill_pretrained(
    model: nn.Module, components: Collection[PretrainedComponent], missing: Optional[Collection[str]]
) -> list[str]:
    """Load each component's pretrained weights if the checkpoint provided none of its keys.

    ``missing``: the keys a checkpoint load left unset (``LoadReport.missing``); None = no checkpoint
    was loaded. Components with an empty ``weights`` keep their initialisation. Returns the files read.
    """
    from ..weights import resolve_weights

    missing_set = None if missing is None else set(missing)
    state_keys = list(model.state_dict())
    loaded = []
    for comp in components:
        if not comp.weights:
            continue
        keys = [k for k in state_keys if k.startswith(comp.prefix) and not k.endswith("mask_token")]
        if not keys or (missing_set is not None and not all(k in missing_set for k in keys)):
            continue
        path = resolve_weights(comp.weights)
        comp.load(comp.module, path)
        logger.info("Loaded pretrained %s from %s", comp.prefix.rstrip("."), path)
        loaded.append(path)
    return loaded


def clip_and_dinov2(
    clip_model: nn.Module, backbone: Optional[nn.Module], weights: dict[str, str]
) -> list[PretrainedComponent]:
    """The CLIP (``sem_seg_head.predictor.clip_model``) and, if the guidance is DINOv2, the DINOv2
    (``backbone.dinov2``) components of the CAT-Seg family; ``weights`` as ``pretrained_from_config``."""
    from .clip import load_clip_weights
    from .dinov2 import DINOv2Backbone, load_dinov2_weights

    out = [PretrainedComponent("sem_seg_head.predictor.clip_model.", clip_model, weights.get("clip", ""),
                               load_clip_weights)]
    if isinstance(backbone, DINOv2Backbone):
        out.insert(0, PretrainedComponent("backbone.dinov2.", backbone, weights.get("dinov2", ""), load_dinov2_weights))
    return out
