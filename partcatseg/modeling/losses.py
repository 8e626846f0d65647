"""PartCATSeg training losses (sigmoid BCE per head + the compositional JSD term).

Kept separate from the network so the exact target construction — which decides what the released
weights learned — can be read and tested on its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vocab import VocabularyError

__all__ = ["jensen_shannon", "partcatseg_losses"]


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, dim: int, eps: float = 1e-10) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between distributions ``p`` and ``q`` along ``dim``."""
    p = p + eps
    q = q + eps
    m = 0.5 * (p + q)
    jsd = 0.5 * (p * (p.log() - m.log())).sum(dim=dim) + 0.5 * (q * (q.log() - m.log())).sum(dim=dim)
    return jsd.mean()


def _check_ids(what: str, ids: torch.Tensor, valid: torch.Tensor, count: int) -> None:
    """Labels must index the vocabulary: a dataset/vocabulary mismatch is named, not left to one_hot
    (a ``VocabularyError``: the command lines report it in one line)."""
    if valid.any():
        bad = ids[valid]
        bad = bad[(bad < 0) | (bad >= count)]
        if bad.numel():
            raise VocabularyError(f"{what} label {int(bad[0])} in the training targets is outside the "
                             f"{count} {what} classes of the training vocabulary")


def partcatseg_losses(
    part_obj_logits: torch.Tensor,
    specific_logits: torch.Tensor,
    costs: dict,
    targets: torch.Tensor,
    obj_targets: torch.Tensor,
    *,
    text_to_part: torch.Tensor,
    obj_to_obj_in_part: torch.Tensor,
    class_to_object: torch.Tensor,
    num_parts: int,
    num_objects: int,
    ignore_value: int,
    ignore_label: int,
    bg_on: bool = True,
    bg_weight: float = 0.05,
    lambda_part: float = 1.0,
    lambda_obj: float = 1.0,
    lambda_jsd: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Loss terms of one batch.

    Args:
        part_obj_logits: (B, Np+No+1, h, w) stage-1 logits; specific_logits: (B, Nop+1, h, w).
        costs: the aggregator's cost volumes (``part_obj_cost``, ``specific_part_cost``).
        targets: (B, H, W) object-specific part ids (``ignore_value`` elsewhere);
        obj_targets: (B, H, W) object ids of the dataset's object list.
        text_to_part / obj_to_obj_in_part: lookup tables of length ``ignore_label + 1``.
        class_to_object: (Nop,) object index of every class.
    Returns:
        the individual terms and their weighted sum under ``loss_sem_seg``.
    """
    size = targets.shape[-2:]
    po = F.interpolate(part_obj_logits, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    sp = F.interpolate(specific_logits, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    num_classes = sp.shape[-1] - 1
    if po.shape[-1] != num_parts + num_objects + 1:
        raise ValueError(f"stage-1 logits have {po.shape[-1]} channels, expected {num_parts + num_objects + 1}")

    part_targets = text_to_part[targets]
    obj_in_part_targets = obj_to_obj_in_part[obj_targets]
    mask = targets != ignore_value
    part_mask = part_targets != ignore_label
    obj_mask = obj_in_part_targets != ignore_label
    _check_ids("object-specific part", targets, mask, num_classes)
    _check_ids("generalized part", part_targets, part_mask, num_parts)
    _check_ids("object", obj_in_part_targets, obj_mask, num_objects)

    po_targets = torch.zeros_like(po)
    sp_targets = torch.zeros_like(sp)
    po_targets[..., :num_parts][part_mask] = F.one_hot(part_targets[part_mask], num_parts).to(po.dtype)
    po_targets[..., num_parts:-1][obj_mask] = F.one_hot(obj_in_part_targets[obj_mask], num_objects).to(po.dtype)
    sp_targets[..., :num_classes][mask] = F.one_hot(targets[mask], num_classes).to(sp.dtype)
    po_weight = torch.ones(po.shape[-1], device=po.device, dtype=po.dtype)
    sp_weight = torch.ones(sp.shape[-1], device=sp.device, dtype=sp.dtype)
    if bg_on:
        # everything outside a (base, part-bearing) object is background: unlabelled pixels,
        # novel objects and part-less objects alike — this is what the released weights learned
        po_targets[..., -1][~obj_mask] = 1
        sp_targets[..., -1][~obj_mask] = 1
        po_weight[-1] = bg_weight
        sp_weight[-1] = bg_weight

    zero = po.sum() * 0.0
    specific_loss, part_loss = zero, zero
    if part_mask.any():
        specific_loss = F.binary_cross_entropy_with_logits(sp[part_mask], sp_targets[part_mask], weight=sp_weight)
        part_loss = F.binary_cross_entropy_with_logits(
            po[..., :num_parts][part_mask], po_targets[..., :num_parts][part_mask], weight=po_weight[:num_parts]
        )
    if obj_mask.any() and (~obj_mask).any():
        specific_loss = specific_loss + F.binary_cross_entropy_with_logits(
            sp[~obj_mask], sp_targets[~obj_mask], weight=sp_weight
        )
    obj_loss = F.binary_cross_entropy_with_logits(
        po[..., num_parts:], po_targets[..., num_parts:], weight=po_weight[num_parts:]
    )

    # compositional loss: per-object sums of stage-2 class probabilities vs stage-1 object costs
    b = targets.shape[0]
    obj_cost = costs["part_obj_cost"][:, :, num_parts:].mean(dim=1).flatten(2)  # B No+1 hw
    sp_cost = costs["specific_part_cost"].mean(dim=1).flatten(2)  # B Nop+1 hw
    obj_prob = obj_cost.softmax(dim=1) + 1e-10
    sp_prob = sp_cost.softmax(dim=1) + 1e-10
    mapping = torch.cat([class_to_object, class_to_object.new_tensor([num_objects])])
    index = mapping.view(1, -1, 1).expand(b, -1, sp_prob.shape[-1])
    mapped = torch.zeros_like(obj_prob).scatter_reduce(1, index, sp_prob, reduce="sum", include_self=False)
    jsd_loss = jensen_shannon(mapped, obj_prob, dim=1)

    total = specific_loss + lambda_part * part_loss + lambda_obj * obj_loss + lambda_jsd * jsd_loss
    return {
        "loss_sem_seg": total,
        # detached terms for logging; not prefixed "loss_" so a trainer summing losses skips them
        "term_specific_part": specific_loss.detach(),
        "term_part": part_loss.detach(),
        "term_obj": obj_loss.detach(),
        "term_jsd": jsd_loss.detach(),
    }
