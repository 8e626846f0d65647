"""PartCLIPSeg training losses (official ``baselines/partclipseg.py`` ``forward`` / ``compute_attn_loss``).

Two groups, summed into ``loss_sem_seg``:

* **BCE terms** on the 352x352 logits (ground truth nearest-resized to that size), background
  channels weighted 0.05:

  - ``part_obj_fg``: object-specific parts (+ background) at part-labelled pixels;
  - ``part_obj_bg``: the same channels at non-object pixels (only when some object pixel exists);
  - ``part``: generalized parts at part-labelled pixels;
  - ``obj``: objects + background at every pixel.

* **Attention control** on the head-averaged self-attention of decoder layer(s) ``attn_levels``:
  for every object present and every ground-truth part, the attention of that part's condition
  (the mean of its generalized-part and object conditions) is averaged over the query tokens inside
  the part mask, smoothed with a 3x3 Gaussian and thresholded inside the object mask.
  ``sep`` = share of covered pixels claimed by two or more parts; ``enh`` = 1 - the smallest
  per-part peak of the smoothed (un-normalised) map.

``total = part_obj_fg + part_obj_bg + obj_lambda * obj + part_lambda * part + sep_lambda * sep
+ enh_lambda * enh``, with NaN/inf replaced by ``torch.nan_to_num`` as officially (an image
without background pixels makes ``part_obj_bg`` the mean of nothing, i.e. NaN, which zeroes the
whole loss of that batch — reproduced).

Official quirks reproduced unless a ``fix_*`` argument says otherwise: the Gaussian is
``exp(-((x - mu) / (2 sigma))^2)`` (an effective sigma of ``sigma * sqrt(2)``), and the object list
of an image is ``unique(objects)[:-1]`` (the largest id is dropped, assuming it is the ignore
label; an image without background pixels loses a real object).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "PartTargets",
    "build_part_targets",
    "partclipseg_bce_terms",
    "gaussian_kernel",
    "merged_part_attention",
    "attention_control_losses",
]

Number = Union[float, torch.Tensor]


def _nearest(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch legacy ``nearest`` resize of an (H, W) label map through float, as the official code."""
    return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()


@dataclass
class PartTargets:
    """Ground truth at the logit resolution, in the three official label spaces.

    ``classes``: object-specific class ids (B, H, W); ``parts``: generalized-part ids; ``objects``:
    object ids of the part vocabulary (``ignore_label`` where absent). ``generalized``: one-hot
    targets (B, H, W, P + O + 1) of the generalized head; ``specific``: (B, H, W, T + 1) of the
    object-specific head.
    """

    classes: torch.Tensor
    parts: torch.Tensor
    objects: torch.Tensor
    generalized: torch.Tensor
    specific: torch.Tensor
    ignore_label: int

    @property
    def class_mask(self) -> torch.Tensor:
        return self.classes != self.ignore_label

    @property
    def part_mask(self) -> torch.Tensor:
        return self.parts != self.ignore_label

    @property
    def object_mask(self) -> torch.Tensor:
        return self.objects != self.ignore_label


def build_part_targets(
    part_gts: Sequence[torch.Tensor],
    obj_gts: Sequence[torch.Tensor],
    size: tuple[int, int],
    text_to_part: torch.Tensor,
    obj_to_obj_in_part: torch.Tensor,
    num_parts: int,
    num_objects: int,
    num_classes: int,
    ignore_label: int,
) -> PartTargets:
    """Resize the per-image label maps to ``size`` and build the official one-hot targets.

    Args:
        part_gts / obj_gts: per image (H, W) object-specific class ids / dataset object ids.
        text_to_part / obj_to_obj_in_part: lookup tables of ``ignore_label + 1`` entries
            (:func:`partcatseg.vocab.label_maps`).
    """
    device = text_to_part.device
    classes = torch.stack([_nearest(gt.to(device), size) for gt in part_gts])
    objects_raw = torch.stack([_nearest(gt.to(device), size) for gt in obj_gts])
    parts = text_to_part[classes]
    objects = obj_to_obj_in_part[objects_raw]
    class_mask = classes != ignore_label
    part_mask = parts != ignore_label
    obj_mask = objects != ignore_label
    b, h, w = classes.shape
    generalized = torch.zeros((b, h, w, num_parts + num_objects + 1), device=device)
    specific = torch.zeros((b, h, w, num_classes + 1), device=device)
    generalized[..., :num_parts][part_mask] = F.one_hot(parts[part_mask], num_classes=num_parts).float()
    generalized[..., num_parts:-1][obj_mask] = F.one_hot(objects[obj_mask], num_classes=num_objects).float()
    generalized[..., -1][~obj_mask] = 1
    specific[..., :num_classes][class_mask] = F.one_hot(classes[class_mask], num_classes=num_classes).float()
    specific[..., -1][~obj_mask] = 1
    return PartTargets(classes, parts, objects, generalized, specific, ignore_label)


def partclipseg_bce_terms(
    logits: torch.Tensor,
    part_obj_logits: torch.Tensor,
    targets: PartTargets,
    num_parts: int,
    bg_weight: float = 0.05,
) -> dict[str, Number]:
    """The four BCE terms (``part_obj_fg``, ``part``, ``part_obj_bg``, ``obj``), official call order.

    ``logits``: (B, P + O + 1, H, W); ``part_obj_logits``: (B, T + 1, H, W). A term whose condition
    does not hold (no part pixel / no object pixel) is the float 0.0.
    """
    logits = logits.permute(0, 2, 3, 1)
    part_obj_logits = part_obj_logits.permute(0, 2, 3, 1)
    class_weight = torch.ones(logits.shape[-1], device=logits.device)
    class_weight[-1] = bg_weight
    specific_weight = torch.ones(part_obj_logits.shape[-1], device=logits.device)
    specific_weight[-1] = bg_weight
    part_mask, obj_mask = targets.part_mask, targets.object_mask
    terms: dict[str, Number] = {"part_obj_fg": 0.0, "part": 0.0, "part_obj_bg": 0.0}
    if part_mask.sum() > 0:
        terms["part_obj_fg"] = F.binary_cross_entropy_with_logits(
            part_obj_logits[part_mask], targets.specific[part_mask], weight=specific_weight
        )
        terms["part"] = F.binary_cross_entropy_with_logits(
            logits[..., :num_parts][part_mask], targets.generalized[..., :num_parts][part_mask],
            weight=class_weight[:num_parts],
        )
    if obj_mask.sum() > 0:  # (the term is over the *non*-object pixels)
        terms["part_obj_bg"] = F.binary_cross_entropy_with_logits(
            part_obj_logits[~obj_mask], targets.specific[~obj_mask], weight=specific_weight
        )
    terms["obj"] = F.binary_cross_entropy_with_logits(
        logits[..., num_parts:], targets.generalized[..., num_parts:], weight=class_weight[num_parts:]
    )
    return terms


def gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5, official: bool = True) -> torch.Tensor:
    """(k, k) normalised Gaussian kernel of the attention smoothing.

    ``official=True``: each axis is ``exp(-((x - mu) / (2 sigma))^2)`` (Attend-and-Excite's
    ``GaussianSmoothing``, i.e. a Gaussian of standard deviation ``sigma * sqrt(2)``); ``False``: the
    standard ``exp(-(x - mu)^2 / (2 sigma^2))``.
    """
    grids = torch.meshgrid(
        [torch.arange(kernel_size, dtype=torch.float32) for _ in range(2)], indexing="ij"
    )
    kernel = 1
    mean = (kernel_size - 1) / 2
    for grid in grids:
        if official:
            axis = torch.exp(-(((grid - mean) / (2 * sigma)) ** 2))
        else:
            axis = torch.exp(-((grid - mean) ** 2) / (2 * sigma**2))
        kernel = kernel * (1 / (sigma * math.sqrt(2 * math.pi)) * axis)
    return kernel / torch.sum(kernel)


def merged_part_attention(
    attentions: dict,
    levels: Sequence[int],
    batch_index: int,
    classes: Sequence[int],
    part_index: torch.Tensor,
    obj_index: torch.Tensor,
    num_parts: int,
) -> torch.Tensor:
    """Attention (K, N, N) of object-specific classes: (generalized-part + object condition) / 2.

    ``attentions[layer]``: (B, C, heads, N, N) decoder attention probabilities; heads are averaged,
    then the ``levels`` are averaged (official ``merge_attention``, computed only for ``classes``).
    """
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=part_index.device)
    part_rows = part_index[idx]
    obj_rows = num_parts + obj_index[idx]
    part_att = 0
    obj_att = 0
    for level in levels:
        att = attentions[level][batch_index]
        part_att = part_att + att[part_rows].mean(dim=1)
        obj_att = obj_att + att[obj_rows].mean(dim=1)
    part_att = part_att / len(levels)
    obj_att = obj_att / len(levels)
    return (part_att + obj_att) / 2.0


def attention_control_losses(
    part_attention: Callable[[int, list], torch.Tensor],
    targets: PartTargets,
    batch_size: int,
    threshold: float = 0.3,
    kernel: torch.Tensor = None,
    fix_object_list: bool = False,
) -> tuple[Number, Number]:
    """Separation and enhancement losses (official ``compute_attn_loss``).

    Args:
        part_attention: ``(b, classes) -> (K, N, N)`` attention of the object-specific ``classes`` in
            image ``b`` (N = 1 + grid tokens; see :func:`merged_part_attention`).
        targets: ground truth at the logit resolution; the part and object masks are sampled onto
            the token grid with legacy ``nearest``.
        threshold: an attention map (min-max normalised, smoothed) above it, inside the object,
            counts as covered by its part.
        kernel: (k, k) smoothing kernel (:func:`gaussian_kernel`).
        fix_object_list: drop the ignore id from the image's object list instead of the largest id.

    Every object of an image is scored with *all* ground-truth parts of the image (official), so the
    smoothed part maps are computed once per image and only the object mask changes per object.
    The official loop computes the same values part by part and object by object.
    """
    if kernel is None:
        kernel = gaussian_kernel()
    ignore = targets.ignore_label
    loss_sep: Number = 0.0
    loss_enh: Number = 0.0
    num_objects = 0
    for b in range(batch_size):
        objects = targets.objects[b].unique().tolist()
        objects = [o for o in objects if o != ignore] if fix_object_list else objects[:-1]
        parts = [j for j in targets.classes[b].unique().tolist() if j != ignore]
        if not objects or not parts:
            continue
        att = part_attention(b, parts)[:, 1:, 1:]  # (K, L, L) queries x keys, class token dropped
        k, length = att.shape[0], att.shape[-1]
        res = int(math.sqrt(length))
        class_grid = _nearest(targets.classes[b], (res, res))
        object_grid = _nearest(targets.objects[b], (res, res))
        ids = torch.as_tensor(parts, device=class_grid.device)
        query_masks = (class_grid.reshape(1, length) == ids[:, None]).to(att.dtype)  # (K, L)
        # mean over *all* queries of the attention of the queries inside the part mask
        avg = (att * query_masks[:, :, None]).mean(dim=1).reshape(k, 1, res, res)
        low = avg.amin(dim=(1, 2, 3), keepdim=True)
        high = avg.amax(dim=(1, 2, 3), keepdim=True)
        norm = (avg - low) / (high - low + 1e-9)
        weight = kernel.to(att)[None, None]
        smoothed = F.conv2d(F.pad(avg, (1, 1, 1, 1), mode="reflect"), weight)
        smoothed_norm = F.conv2d(F.pad(norm, (1, 1, 1, 1), mode="reflect"), weight)[:, 0]
        peak = smoothed.amax(dim=(1, 2, 3)).min()
        min_of_max: Number = peak if peak < 1.0 else 1.0
        above = smoothed_norm > threshold  # (K, res, res)
        for obj in objects:
            num_objects += 1
            coverage = (above & (object_grid == obj)[None]).float().sum(dim=0)
            loss_sep = loss_sep + (coverage > 1).float().sum() / ((coverage >= 1).float().sum() + 1e-9)
            loss_enh = loss_enh + (1.0 - min_of_max)
    num_objects = num_objects or 1
    return loss_sep / (num_objects * batch_size), loss_enh / (num_objects * batch_size)
