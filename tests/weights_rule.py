"""The reference fixtures' rule for filling weights: deterministic per checkpoint key."""
from __future__ import annotations

import zlib

import torch
from torch import nn


def rule_tensor(key: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    t = torch.randn(tuple(shape), generator=g) * 0.02
    if key.endswith("logit_scale"):
        t = torch.full(tuple(shape), 4.6052)
    elif len(shape) == 1 and key.endswith(".weight"):
        t = t + 1.0
    return t


def rule_state_dict(model: nn.Module, skip=("attn_mask",)) -> dict:
    """Rule-filled copy of ``model.state_dict()`` (keys ending in ``skip`` keep the model's value)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith(skip) or not value.is_floating_point():
            out[key] = value.clone()
        else:
            out[key] = rule_tensor(key, value.shape)
    return out
