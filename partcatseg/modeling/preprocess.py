"""Image pre- and post-processing shared by every meta-architecture.

Officially each image is normalised, zero-padded bottom/right to a multiple of 32 (detectron2's
``ImageList``), then the *padded* tensor is squashed to the encoder resolution regardless of aspect
ratio, and the low-resolution output is later resized to the original size — padding included.
We do this per image, so a batch gives exactly the numbers of batch size 1.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["pad_to_divisible", "normalize_pad_resize", "resize_to_output"]


def pad_to_divisible(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad a (C, H, W) tensor bottom/right so H and W are multiples of ``divisor``."""
    if divisor <= 1:
        return image
    h, w = image.shape[-2:]
    ph = (divisor - h % divisor) % divisor
    pw = (divisor - w % divisor) % divisor
    if ph == 0 and pw == 0:
        return image
    return F.pad(image, (0, pw, 0, ph))


def normalize_pad_resize(
    images: Sequence[torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    size_divisibility: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """uint8/float (3, H, W) images -> normalised, padded, squashed batch (B, 3, *size)."""
    out = []
    for image in images:
        x = (image.to(mean.dtype) - mean) / std
        x = pad_to_divisible(x, size_divisibility)
        out.append(F.interpolate(x[None], size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, dim=0)


def resize_to_output(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, h, w) low-resolution scores -> (C, height, width), bilinear as ``sem_seg_postprocess``."""
    return F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
