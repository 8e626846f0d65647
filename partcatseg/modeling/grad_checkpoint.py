"""Activation checkpointing (``MODEL.GRADIENT_CHECKPOINTING``): trade recomputation for training memory.

Training keeps every intermediate tensor of the forward pass for the backward pass; for the cost
aggregator that is a few activations per class, per layer, so memory grows with the vocabulary.  A
checkpointed step keeps only its inputs and recomputes its intermediates during the backward pass:
one step's activations are alive at a time instead of all of them, for roughly one extra forward.

Non-reentrant :func:`torch.utils.checkpoint.checkpoint` recomputes under the forward's autocast and
RNG state and with gradients enabled, so the gradients are the ones without checkpointing (the
recomputation runs the same kernels on the same inputs).  Inference (``no_grad``) never checkpoints.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.utils.checkpoint

__all__ = ["checkpointed"]


def checkpointed(fn: Callable[..., Any], *args: Any, enabled: bool, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, checkpointed when ``enabled`` and autograd is recording.

    Callers pass ``enabled = <their flag> and self.training``; nothing is recorded without
    gradients, so there is nothing to save and ``fn`` runs as it is.
    """
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return fn(*args, **kwargs)
