"""detectron2-layout ResNet guidance backbone (pre-CVPR CAT-Seg, OV-PARTS and part-catseg baselines).

CAT-Seg's ``model_final_base.pth`` and the part-catseg ``catseg_{ade,partimagenet}`` configs use a
detectron2 ResNet-101 (basic stem, stride in the 3x3 conv, FrozenBN) whose res2-res4 maps guide the
aggregator.  The architecture is torchvision's bottleneck design; what has to match detectron2 is the
parameter naming (``stem.conv1.norm.running_mean``, ``res3.0.shortcut.weight`` ...), so the module is
written out here with those names.  Frozen batch norm comes from torchvision.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["ResNetBackbone", "RESNET_BLOCKS"]

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class ConvNorm(nn.Conv2d):
    """A bias-free convolution with its FrozenBN as ``.norm`` (detectron2's ``Conv2d(norm=...)``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.norm = FrozenBatchNorm2d(out_ch, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    def __init__(self, in_ch: int, bottleneck: int, out_ch: int, stride: int, stride_in_1x1: bool) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        if in_ch != out_ch or stride != 1:
            self.shortcut = ConvNorm(in_ch, out_ch, 1, stride=stride)
        else:
            self.shortcut = None
        self.conv1 = ConvNorm(in_ch, bottleneck, 1, stride=s1)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=s3, padding=1)
        self.conv3 = ConvNorm(bottleneck, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        short = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + short)


class BasicStem(nn.Module):
    def __init__(self, out_ch: int = 64) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_ch, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNetBackbone(nn.Module):
    """ResNet stages res2..res{max out} with detectron2 key names; returns ``{res2, res3, res4}``.

    Args:
        depth: 50, 101 or 152.
        out_features: stages to return (later stages are not built, as in detectron2).
        input_size: square side the (normalised, /32-padded) image is resized to (384 officially).
    """

    def __init__(
        self,
        depth: int = 101,
        out_features: Sequence[str] = ("res2", "res3", "res4"),
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        stride_in_1x1: bool = False,
        input_size: int = 384,
    ) -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"MODEL.RESNETS.DEPTH={depth}: expected one of {sorted(RESNET_BLOCKS)}")
        self.input_size = input_size
        self.out_features = tuple(out_features)
        self.stem = BasicStem(stem_out_channels)
        last = max(int(name[3:]) for name in self.out_features)
        in_ch, out_ch = stem_out_channels, res2_out_channels
        self.channels: dict[str, int] = {}
        for idx, n_blocks in enumerate(RESNET_BLOCKS[depth][: last - 1]):
            name = f"res{idx + 2}"
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (b == 0 and idx > 0) else 1
                blocks.append(Bottleneck(in_ch, out_ch // 4, out_ch, stride, stride_in_1x1))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            self.channels[name] = out_ch
            out_ch *= 2

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = (self.input_size, self.input_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        x = self.stem(images)
        out = {}
        for name in self.channels:
            x = getattr(self, name)(x)
            if name in self.out_features:
                out[name] = x
        return out
