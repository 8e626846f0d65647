"""Cost-aggregation building blocks shared by CAT-Seg (both versions) and PartCATSeg.

A cost volume ``(B, C, T, H, W)`` (embedding C, T classes) is refined by alternating
*spatial* aggregation (Swin blocks over H*W per class, queries/keys guided by image features) and
*class* aggregation (attention over the T classes per pooled position, guided by text features),
then decoded per class by a small U-Net-style upsampler.  Module and parameter names follow the
official checkpoints so state dicts load unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from timm.layers import Mlp
from torch import nn

__all__ = [
    "window_partition",
    "window_reverse",
    "shifted_window_mask",
    "WindowAttention",
    "SwinTransformerBlock",
    "SwinTransformerBlockWrapper",
    "linear_attention",
    "query_attention",
    "full_attention",
    "AttentionLayer",
    "ClassTransformerLayer",
    "AggregatorLayer",
    "DoubleConv",
    "Up",
    "AggregatorBase",
    "cosine_cost",
]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window*window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, window*window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Standard Swin region mask (nW, N, N): 0 inside a region, -100 across regions."""
    regions = torch.zeros((1, h, w, 1))
    label = 0
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in spans:
        for ws in spans:
            regions[:, hs, ws, :] = label
            label += 1
    windows = window_partition(regions, window).squeeze(-1)  # nW, N
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Window self-attention whose queries/keys also see the appearance guidance.

    ``q`` and ``k`` project ``[x || guidance]``; ``v`` projects ``x`` only.  No relative position
    bias (the official aggregator has none).
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        bw, n, _ = x.shape
        heads = self.num_heads
        q = self.q(x).view(bw, n, heads, -1).transpose(1, 2)
        k = self.k(x).view(bw, n, heads, -1).transpose(1, 2)
        v = self.v(x[..., : self.dim]).view(bw, n, heads, -1).transpose(1, 2)
        attn_mask = None
        if mask is not None:
            nw = mask.shape[0]
            # (nW, N, N) -> broadcast over batch and heads, windows are batch-major
            q = q.view(bw // nw, nw, heads, n, -1)
            k = k.view(bw // nw, nw, heads, n, -1)
            v = v.view(bw // nw, nw, heads, n, -1)
            attn_mask = mask.to(q.dtype).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.reshape(bw, heads, n, -1).transpose(1, 2).reshape(bw, n, -1)
        return self.proj(out)


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention block over one class's H x W cost map."""

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:
            # a window covering the whole map: no partition, no shift (as in Swin)
            shift_size, window_size = 0, min(self.input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        mask = shifted_window_mask(*self.input_resolution, window_size, shift_size) if shift_size else None
        # persistent for the shifted block only: it is a state-dict key of the official checkpoints
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if guidance is not None:
            x = torch.cat([x, guidance.view(b, h, w, -1)], dim=-1)
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, self.window_size)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows, self.window_size, h, w)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + x.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class SwinTransformerBlockWrapper(nn.Module):
    """Two Swin blocks (shift 0, then window/2) applied to every class of a cost volume."""

    def __init__(
        self, dim: int, guidance_dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int
    ) -> None:
        super().__init__()
        self.block_1 = SwinTransformerBlock(dim, guidance_dim, input_resolution, num_heads, window_size, 0)
        self.block_2 = SwinTransformerBlock(
            dim, guidance_dim, input_resolution, num_heads, window_size, window_size // 2
        )
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = rearrange(x, "B C T H W -> (B T) (H W) C")
        if guidance is not None:
            guidance = self.guidance_norm(repeat(guidance, "B C H W -> (B T) (H W) C", T=t))
        x = self.block_1(x, guidance)
        x = self.block_2(x, guidance)
        return rearrange(x, "(B T) (H W) C -> B C T H W", B=b, T=t, H=h, W=w)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention (elu+1 feature map) over (N, L, H, D) tensors (CAT-Seg's class attention)."""
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    length = v.shape[1]
    v = v / length  # the official code scales to avoid fp16 overflow; kept for identical numerics
    kv = torch.einsum("nshd,nshv->nhdv", k, v)
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * length


def query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """PartCATSeg's class-competition attention over (N, L, H, D) tensors.

    The softmax runs over *queries* (classes compete for each key), then each query's weights are
    re-normalised over keys.
    """
    scores = torch.einsum("nlhd,nshd->nlsh", q, k) / q.shape[-1] ** 0.5
    weights = scores.softmax(dim=1) + eps
    weights = weights / weights.sum(dim=2, keepdim=True)
    return torch.einsum("nshd,nlsh->nlhd", v, weights)


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over (N, L, H, D) tensors."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


_CLASS_ATTENTION = {"linear": linear_attention, "query": query_attention, "full": full_attention}


class AttentionLayer(nn.Module):
    """Multi-head attention over classes; q/k see ``[x || text guidance]``; no output projection."""

    def __init__(self, hidden_dim: int, guidance_dim: int, nheads: int, attention_type: str) -> None:
        super().__init__()
        if attention_type not in _CLASS_ATTENTION:
            raise ValueError(f"attention_type={attention_type!r}; expected one of {sorted(_CLASS_ATTENTION)}")
        self.nheads = nheads
        self.attention_type = attention_type
        self.q = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.k = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        xg = torch.cat([x, guidance], dim=-1) if guidance is not None else x
        split = "B L (H D) -> B L H D"
        q = rearrange(self.q(xg), split, H=self.nheads)
        k = rearrange(self.k(xg), split, H=self.nheads)
        v = rearrange(self.v(x), split, H=self.nheads)
        out = _CLASS_ATTENTION[self.attention_type](q, k, v)
        return rearrange(out, "B L H D -> B L (H D)")


class ClassTransformerLayer(nn.Module):
    """Attention across classes at every (pooled) position, added back at full resolution.

    With ``pad_len > 0`` (CAT-Seg CVPR) the class axis is padded with learnt tokens up to
    ``pad_len`` classes, so the attention statistics do not depend on the vocabulary size.
    """

    def __init__(
        self,
        hidden_dim: int,
        guidance_dim: int,
        nheads: int,
        attention_type: str,
        pooling_size: Sequence[int],
        pad_len: int = 0,
    ) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(tuple(pooling_size))
        self.pad_len = pad_len
        if pad_len > 0:
            self.padding_tokens = nn.Parameter(torch.zeros(1, 1, hidden_dim))
            self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim))
        self.attention = AttentionLayer(hidden_dim, guidance_dim, nheads, attention_type)
        self.MLP = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim * 4), nn.ReLU(), nn.Linear(hidden_dim * 4, hidden_dim)
        )
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        b, _, t, h, w = x.shape
        x_pool = self.pool(rearrange(x, "B C T H W -> (B T) C H W"))
        hp, wp = x_pool.shape[-2:]
        x_pool = rearrange(x_pool, "(B T) C H W -> (B H W) T C", B=b)
        if guidance is not None:
            guidance = repeat(guidance, "B T C -> (B H W) T C", H=hp, W=wp)
        padded = self.pad_len > 0 and t < self.pad_len
        if padded:
            n = x_pool.shape[0]
            x_pool = torch.cat([x_pool, self.padding_tokens.expand(n, self.pad_len - t, -1)], dim=1)
            if guidance is not None:
                guidance = torch.cat([guidance, self.padding_guidance.expand(n, self.pad_len - t, -1)], dim=1)
        x_pool = x_pool + self.attention(self.norm1(x_pool), guidance)
        x_pool = x_pool + self.MLP(self.norm2(x_pool))
        if padded:
            x_pool = x_pool[:, :t]
        x_pool = rearrange(x_pool, "(B H W) T C -> (B T) C H W", H=hp, W=wp)
        if (hp, wp) != (h, w):
            x_pool = F.interpolate(x_pool, size=(h, w), mode="bilinear", align_corners=True)
        return x + rearrange(x_pool, "(B T) C H W -> B C T H W", B=b)


class AggregatorLayer(nn.Module):
    """One spatial (Swin) step followed by one class-attention step."""

    def __init__(
        self,
        hidden_dim: int,
        text_guidance_dim: int,
        appearance_guidance_dim: int,
        nheads: int,
        input_resolution: tuple[int, int],
        pooling_size: Sequence[int],
        window_size: int,
        attention_type: str,
        pad_len: int = 0,
    ) -> None:
        super().__init__()
        self.swin_block = SwinTransformerBlockWrapper(
            hidden_dim, appearance_guidance_dim, input_resolution, nheads, window_size
        )
        self.attention = ClassTransformerLayer(
            hidden_dim, text_guidance_dim, nheads, attention_type, pooling_size, pad_len
        )

    def forward(
        self, x: torch.Tensor, appearance_guidance: Optional[torch.Tensor], text_guidance: Optional[torch.Tensor]
    ) -> torch.Tensor:
        if appearance_guidance is not None:
            x = self.swin_block(x, appearance_guidance)
        if text_guidance is not None:
            x = self.attention(x, text_guidance)
        return x


class DoubleConv(nn.Module):
    """(conv3x3 -> GroupNorm -> ReLU) x 2; GroupNorm groups = channels // 16 as officially."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = out_channels // 16
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """2x transposed-conv upsampling, concatenation with projected guidance, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.up(x)
        if guidance is not None:
            t = x.shape[0] // guidance.shape[0]
            x = torch.cat([x, repeat(guidance, "B C H W -> (B T) C H W", T=t)], dim=1)
        return self.conv(x)


class AggregatorBase(nn.Module):
    """Parameters and steps every cost aggregator shares (official names kept for checkpoints).

    ``conv1`` embeds a P-template cost map into ``hidden_dim`` channels per class; the guidance
    projections map image features (appearance) and text features to the aggregation widths; the
    decoder (``decoder1``, ``decoder2``, ``head``) upsamples every class's embedding 4x to a logit.
    Sub-classes build their layers and define ``forward``.
    """

    def __init__(
        self,
        *,
        text_guidance_dim: int,
        text_guidance_proj_dim: int,
        appearance_guidance_dim: int,
        appearance_guidance_proj_dim: int,
        decoder_dims: Sequence[int],
        decoder_guidance_dims: Sequence[int],
        decoder_guidance_proj_dims: Sequence[int],
        hidden_dim: int,
        prompt_channel: int,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv1 = nn.Conv2d(prompt_channel, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.guidance_projection = (
            nn.Sequential(
                nn.Conv2d(appearance_guidance_dim, appearance_guidance_proj_dim, kernel_size=3, padding=1),
                nn.ReLU(),
            )
            if appearance_guidance_dim > 0
            else None
        )
        self.text_guidance_projection = (
            nn.Sequential(nn.Linear(text_guidance_dim, text_guidance_proj_dim), nn.ReLU())
            if text_guidance_dim > 0
            else None
        )
        self.decoder_guidance_projection = (
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(d, dp, kernel_size=3, padding=1), nn.ReLU())
                for d, dp in zip(decoder_guidance_dims, decoder_guidance_proj_dims)
            )
            if decoder_guidance_dims[0] > 0
            else None
        )
        self.decoder1 = Up(hidden_dim, decoder_dims[0], decoder_guidance_proj_dims[0])
        self.decoder2 = Up(decoder_dims[0], decoder_dims[1], decoder_guidance_proj_dims[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, padding=1)

    @staticmethod
    def embed_cost(conv: nn.Conv2d, corr: torch.Tensor) -> torch.Tensor:
        """(B, P, T, H, W) cost -> (B, hidden, T, H, W) with a per-class convolution."""
        b = corr.shape[0]
        x = conv(rearrange(corr, "B P T H W -> (B T) P H W"))
        return rearrange(x, "(B T) C H W -> B C T H W", B=b)

    def project_guidance(self, vis: Sequence[torch.Tensor]) -> tuple[Optional[torch.Tensor], list]:
        """Appearance guidance (from the coarsest map) and decoder guidance (from the finer ones)."""
        appearance = self.guidance_projection(vis[0]) if self.guidance_projection is not None else None
        decoder = [None, None]
        if self.decoder_guidance_projection is not None:
            decoder = [proj(g) for proj, g in zip(self.decoder_guidance_projection, vis[1:])]
        return appearance, decoder

    def project_text(self, text_feats: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, T, P, C) prompts -> (B, T, proj) guidance from the re-normalised template mean."""
        if self.text_guidance_projection is None:
            return None
        text = text_feats.mean(dim=-2)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.text_guidance_projection(text)

    def decode(self, x: torch.Tensor, guidance: Sequence) -> torch.Tensor:
        """(B, C, T, h, w) aggregated cost -> (B, T, 4h, 4w) logits."""
        b = x.shape[0]
        y = rearrange(x, "B C T H W -> (B T) C H W")
        y = self.decoder1(y, guidance[0])
        y = self.decoder2(y, guidance[1])
        y = self.head(y)
        return rearrange(y, "(B T) () H W -> B T H W", B=b)


def cosine_cost(img_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """Cosine cost volume (B, P, T, H, W) between (B, C, H, W) image and (B, T, P, C) text features."""
    img = F.normalize(img_feats, dim=1)
    text = F.normalize(text_feats, dim=-1)
    return torch.einsum("bchw,btpc->bpthw", img, text)
