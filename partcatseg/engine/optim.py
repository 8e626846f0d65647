"""Optimizer and gradient clipping with the official CAT-Seg / part-catseg rules.

Per-parameter hyper-parameters (both official ``train_net.py`` ``build_optimizer``), decided from
the name of the module that *owns* the parameter and from that module's type:

* lr = ``BASE_LR``, × ``BACKBONE_MULTIPLIER`` if the owning module's name contains "backbone",
  × ``CLIP_MULTIPLIER`` if it contains "clip_model" — the CLIP rule exists only in
  cvlab-kaist/CAT-Seg; kaist-cvml/part-catseg's script never applies it (its CLIP is frozen, so
  it makes no difference there). :func:`uses_clip_multiplier` picks the rule from the config.
* weight decay = ``WEIGHT_DECAY``; 0.0 for parameters named ``relative_position_bias_table`` /
  ``absolute_pos_embed``; ``WEIGHT_DECAY_NORM`` for parameters of norm modules (BatchNorm,
  SyncBatchNorm, GroupNorm, InstanceNorm, LayerNorm and subclasses such as CLIP's LayerNorm,
  LocalResponseNorm); ``WEIGHT_DECAY_EMBED`` for ``nn.Embedding``. Later rules win.
* only ``requires_grad`` parameters; a parameter shared by several modules is taken once, with
  the hyper-parameters of the first module that owns it.

The official code makes one param group per tensor. By default tensors with identical
(lr, weight_decay) are merged into one group: the update is mathematically the same (AdamW/SGD
treat every tensor independently) and the multi-tensor kernels run much faster.
``merge_groups=False`` reproduces the official one-group-per-tensor layout (needed only to load
an optimizer state saved by the official code).

Gradient clipping (:class:`GradientClipper`) follows ``SOLVER.CLIP_GRADIENTS``: "full_model"
clips the global L2 norm of all trainable gradients to ``CLIP_VALUE`` (``NORM_TYPE`` ignored, as
officially); "value"/"norm" clip each tensor separately as detectron2 does. The official code
clips inside ``optimizer.step()``; the trainer clips right before ``step()``, which is the same.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

__all__ = [
    "NORM_MODULE_TYPES",
    "GradientClipper",
    "build_gradient_clipper",
    "build_lr_scheduler",
    "build_optimizer",
    "get_param_groups",
    "uses_clip_multiplier",
]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
ZERO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
OPTIMIZERS = ("ADAMW", "SGD")
CLIP_TYPES = ("full_model", "value", "norm")


def uses_clip_multiplier(cfg: Any) -> bool:
    """Whether the official script for this config scales ``clip_model`` learning rates.

    Only CAT-Seg CVPR 2024 (cvlab-kaist/CAT-Seg) does; PartCATSeg and part-catseg's CATSeg
    baseline are trained by part-catseg's script, which ignores ``CLIP_MULTIPLIER``.
    """
    if cfg.MODEL.META_ARCHITECTURE != "CATSeg":
        return False
    from ..config import resolve_catseg_variant

    return resolve_catseg_variant(cfg) == "cvpr2024"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_multiplier: float = 1.0,
    clip_multiplier: Optional[float] = None,
    merge_groups: bool = True,
) -> List[Dict[str, Any]]:
    """Optimizer param groups per the module docstring; each group also carries ``"names"``
    (qualified parameter names, for logging and tests; torch ignores unknown group keys)."""
    model = _unwrap(model)
    entries: List[Dict[str, Any]] = []
    seen: set = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, wd = base_lr, weight_decay
            if "backbone" in module_name:
                lr *= backbone_multiplier
            if clip_multiplier is not None and "clip_model" in module_name:
                lr *= clip_multiplier
            if param_name in ZERO_DECAY_PARAM_NAMES:
                wd = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                wd = weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            entries.append({"params": [param], "names": [full_name], "lr": lr, "weight_decay": wd})
    if not entries:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True: nothing to optimize")
    if not merge_groups:
        return entries
    merged: Dict[tuple, Dict[str, Any]] = {}
    for e in entries:
        key = (e["lr"], e["weight_decay"])
        if key not in merged:
            merged[key] = {"params": [], "names": [], "lr": e["lr"], "weight_decay": e["weight_decay"]}
        merged[key]["params"] += e["params"]
        merged[key]["names"] += e["names"]
    return list(merged.values())


def _describe(groups: Sequence[Dict[str, Any]]) -> str:
    lines = []
    for g in groups:
        numel = sum(p.numel() for p in g["params"])
        lines.append(f"  lr={g['lr']:.3g} weight_decay={g['weight_decay']:.3g}: {len(g['params'])} tensor(s), "
                     f"{numel / 1e6:.3f}M parameters (e.g. {g['names'][0]})")
    return "\n".join(lines)


def build_optimizer(cfg: Any, model: nn.Module, *, clip_multiplier: Optional[bool] = None,
                    merge_groups: bool = True) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ("ADAMW" with torch's default betas/eps, or "SGD" with ``MOMENTUM``).

    Args:
        clip_multiplier: apply ``SOLVER.CLIP_MULTIPLIER`` to ``clip_model`` parameters;
            ``None`` = as the official script of this config does (:func:`uses_clip_multiplier`).
        merge_groups: merge tensors with equal (lr, weight_decay) into one group.
    """
    s = cfg.SOLVER
    kind = str(s.OPTIMIZER).upper()
    if kind not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER={s.OPTIMIZER!r}: expected one of {list(OPTIMIZERS)}")
    use_clip = uses_clip_multiplier(cfg) if clip_multiplier is None else clip_multiplier
    groups = get_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        weight_decay_embed=s.WEIGHT_DECAY_EMBED,
        backbone_multiplier=s.BACKBONE_MULTIPLIER,
        clip_multiplier=s.CLIP_MULTIPLIER if use_clip else None,
        merge_groups=merge_groups,
    )
    if kind == "ADAMW":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=s.BASE_LR)
    else:
        optimizer = torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM)
    logger.info("%s with %d param group(s)%s:\n%s", kind, len(groups),
                "" if use_clip else " (SOLVER.CLIP_MULTIPLIER not applied, as in the official script)",
                _describe(groups))
    return optimizer


def _total_norm(grads: List[torch.Tensor], norm_type: float) -> torch.Tensor:
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, norm_type)
    norms = [torch.linalg.vector_norm(g.detach(), norm_type) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


class GradientClipper:
    """Clip gradients in place and return the pre-clipping global L2 gradient norm.

    The returned norm is computed in every mode (also when clipping is disabled) because the
    trainer uses it to detect NaN/inf gradients before the optimizer step.
    """

    def __init__(self, clip_type: str = "full_model", clip_value: float = 0.0, norm_type: float = 2.0,
                 enabled: bool = True):
        if enabled and clip_type not in CLIP_TYPES:
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip_type!r}: expected one of {list(CLIP_TYPES)}")
        self.clip_type = clip_type
        self.clip_value = float(clip_value)
        self.norm_type = float(norm_type)
        # the official full-model clipper is also off for CLIP_VALUE <= 0
        self.enabled = bool(enabled) and not (clip_type == "full_model" and self.clip_value <= 0.0)

    def __repr__(self) -> str:
        if not self.enabled:
            return "GradientClipper(disabled)"
        return f"GradientClipper({self.clip_type}, clip_value={self.clip_value}, norm_type={self.norm_type})"

    def __call__(self, params: Iterable[torch.Tensor]) -> Optional[torch.Tensor]:
        params = [p for p in params if p.grad is not None]
        if not params:
            return None
        if self.enabled and self.clip_type == "full_model":
            return torch.nn.utils.clip_grad_norm_(params, self.clip_value)
        total = _total_norm([p.grad for p in params], 2.0)
        if self.enabled:
            for p in params:
                if self.clip_type == "value":
                    torch.nn.utils.clip_grad_value_(p, self.clip_value)
                else:
                    torch.nn.utils.clip_grad_norm_(p, self.clip_value, self.norm_type)
        return total


def build_gradient_clipper(cfg: Any) -> GradientClipper:
    c = cfg.SOLVER.CLIP_GRADIENTS
    return GradientClipper(c.CLIP_TYPE, c.CLIP_VALUE, c.NORM_TYPE, enabled=c.ENABLED)


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer):
    """See :func:`partcatseg.engine.lr_scheduler.build_lr_scheduler` (re-exported here)."""
    from .lr_scheduler import build_lr_scheduler as _build

    return _build(cfg, optimizer)
