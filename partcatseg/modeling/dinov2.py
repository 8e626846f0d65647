"""DINOv2 guidance backbone: timm's ViT with the official DINOv2 position-embedding interpolation.

PartCATSeg feeds DINOv2 ViT-S/14 a 448x448 image and uses its normalised patch tokens, resized to
three strides, as *appearance guidance*.  timm holds the same architecture and parameter names as
the official torch.hub model, except for the unused ``mask_token``, which we add so checkpoints
round-trip.  timm's own position-embedding resampling (size-based, antialiased) is not numerically
the official one (``scale_factor=(n+0.1)/M``, bicubic, no antialias), so the token preparation is
done here.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .grad_checkpoint import checkpointed

__all__ = ["DINOv2Backbone", "interpolate_dinov2_pos_embed"]


def interpolate_dinov2_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1
) -> torch.Tensor:
    """Resize a (1, 1+M*M, D) DINOv2 position embedding to ``grid`` the official way."""
    n = pos_embed.shape[1] - 1
    m = int(math.isqrt(n))
    if (m, m) == tuple(grid):
        return pos_embed
    dtype = pos_embed.dtype
    pos = pos_embed.float()
    patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if offset:
        scale = ((grid[0] + offset) / m, (grid[1] + offset) / m)
        patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    else:
        patch = F.interpolate(patch, size=tuple(grid), mode="bicubic", antialias=False)
    if tuple(patch.shape[-2:]) != tuple(grid):
        raise RuntimeError(f"DINOv2 position embedding resized to {tuple(patch.shape[-2:])}, expected {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([pos[:, :1], patch], dim=1).to(dtype)


class DINOv2Backbone(nn.Module):
    """Multi-scale DINOv2 patch features ``{res2, res3, res4}`` at 4x, 2x and 1x the CLIP grid.

    Args:
        arch: timm model name (``vit_small_patch14_dinov2`` is the official ``dinov2_vits14``).
        input_size: side of the square image fed to DINOv2 (448 -> 32x32 tokens officially).
        out_sizes: output sides for res2, res3, res4 (96, 48, 24 for a 24x24 CLIP grid).
        model_kwargs: extra timm constructor arguments (e.g. a reduced ``embed_dim`` for tests).
        grad_checkpointing: checkpoint the ViT blocks one by one in training (see :mod:`.grad_checkpoint`).
    """

    def __init__(
        self,
        arch: str = "vit_small_patch14_dinov2",
        input_size: int = 448,
        out_sizes: tuple[int, int, int] = (96, 48, 24),
        model_kwargs: Optional[dict] = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        import timm

        kwargs = {"img_size": 518, "num_classes": 0}
        kwargs.update(model_kwargs or {})
        self.dinov2 = timm.create_model(arch, pretrained=False, **kwargs)
        # The official hub model carries an (unused) mask token; keep it for checkpoint parity.
        self.dinov2.mask_token = nn.Parameter(torch.zeros(1, self.dinov2.embed_dim))
        self.input_size = input_size
        self.out_sizes = tuple(out_sizes)
        self.patch_size = self.dinov2.patch_embed.patch_size[0]
        self.embed_dim = self.dinov2.embed_dim
        self.grad_checkpointing = grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block in training (timm's name for the switch; timm's own flag is not used)."""
        self.grad_checkpointing = bool(enable)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final-norm patch tokens ``(B, D, h, w)`` of already-normalised, resized images."""
        model = self.dinov2
        x = model.patch_embed.proj(images)  # B, D, h, w
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + interpolate_dinov2_pos_embed(model.pos_embed, grid)
        if self.grad_checkpointing and self.training:  # checkpointed() itself skips it without autograd
            for block in model.blocks:
                x = checkpointed(block, x, enabled=True)
        else:
            x = model.blocks(x)
        x = model.norm(x)
        tokens = x[:, model.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = (self.input_size, self.input_size)
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        # The tokens come out channels-last; bilinear resizing of a channels-last map is ~7x slower
        # on a CPU (it resizes in that layout and then copies to NCHW), so make it NCHW first.
        feats = self.patch_tokens(images).contiguous()
        out = {}
        for name, side in zip(("res2", "res3", "res4"), self.out_sizes):
            out[name] = F.interpolate(feats, size=(side, side), mode="bilinear", align_corners=False)
        return out


def load_dinov2_weights(backbone: DINOv2Backbone, path: str) -> list[str]:
    """Load pretrained DINOv2 weights (timm safetensors or the official hub ``.pth``) into ``backbone``.

    Accepts bare keys or ones prefixed ``dinov2.`` / ``backbone.dinov2.``; the hub's ``mask_token``
    is optional (timm's files lack it).  Returns the keys left at their current values.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
    clean = {}
    for key, value in state.items():
        for prefix in ("backbone.dinov2.", "dinov2."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        clean[key] = value
    result = backbone.dinov2.load_state_dict(clean, strict=False)
    missing = [k for k in result.missing_keys if k != "mask_token"]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{path} does not fit the DINOv2 backbone: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )
    return list(result.missing_keys)
