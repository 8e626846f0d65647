"""Cost-aggregation building blocks shared by CAT-Seg (both versions) and PartCATSeg.

A cost volume over T classes is refined by alternating *spatial* aggregation (Swin blocks over
H*W per class, queries/keys guided by image features) and *class* aggregation (attention over the
T classes per pooled position, guided by text features), then decoded per class by a small
U-Net-style upsampler.  Module and parameter names follow the official checkpoints so state dicts
load unchanged.

Layout.  The official code keeps the volume as ``(B, C, T, H, W)`` and re-arranges it (a full copy)
around every step.  Here it stays ``(B, T, H, W, C)`` — "class-major, channels-last" — from the
cost embedding to the decoder: the Swin and class steps apply their linear layers on the last axis
directly, and the convolutions see channels-last views (no copy; oneDNN's preferred format).

Work that does not depend on the class is done once per image instead of once per class: the
guidance halves of the Swin ``q``/``k`` projections, of the class-attention ``q``/``k``
projections and of the first decoder convolution are computed on the guidance alone and
broadcast (``W [x; g] = W_x x + W_g g``).  The results equal the official ones up to float
re-association (~1e-6; the parity tests hold).

Every step except the class attention acts on each class independently, so ``class_chunk`` (set by
the meta-architecture from ``TEST.CLASS_CHUNK``) runs those steps over slices of classes at
inference: identical numbers, memory bounded by the chunk size instead of the vocabulary size.

At inference (no autograd, see ``_fast_inference``) a few steps take a faster formulation of the
same math -- the class attention's upsampling as two small matmuls, its softmax along contiguous
memory, Swin slices written straight into the output, the guidance q/k/v term fused into the matmul
under bf16 -- equal to the training formulation up to float re-association (~1e-7).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import window_partition
from torch import nn

from .fused import _autocast_on, _compiling, _onednn_linear_dtype, linear, packed_attention
from .grad_checkpoint import checkpointed

__all__ = [
    "shifted_window_mask",
    "window_token_order",
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
    "class_slices",
    "over_class_slices",
    "guided_qkv",
    "guidance_qkv_term",
    "linear",
]


def class_slices(num: int, chunk: int) -> list[slice]:
    """Consecutive slices of at most ``chunk`` items covering ``range(num)`` (one slice if chunk <= 0)."""
    if chunk <= 0 or chunk >= num:
        return [slice(0, num)]
    return [slice(s, min(s + chunk, num)) for s in range(0, num, chunk)]


def over_class_slices(fn: Callable[[slice], torch.Tensor], num: int, chunk: int) -> torch.Tensor:
    """``fn(s)`` over :func:`class_slices`, stacked along dim 1 (the class axis; the class attention
    slices its position axis the same way) into one tensor.

    With a single slice the result is ``fn``'s own output (no copy); otherwise each slice's result
    is written into a preallocated output, so only one slice's intermediates are alive at a time.
    """
    slices = class_slices(num, chunk)
    if len(slices) == 1:
        return fn(slices[0])
    out = None
    for s in slices:
        y = fn(s)
        if out is None:
            out = y.new_empty((y.shape[0], num, *y.shape[2:]))
        out[:, s] = y
    return out


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N, C, H, W) channels-last *view* (no copy)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W, C); a view when ``x`` is channels-last, else a copy."""
    return x.permute(0, 2, 3, 1)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Standard Swin region mask (nW, N, N): 0 inside a region, -100 across regions."""
    regions = torch.zeros((1, h, w, 1))
    label = 0
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in spans:
        for ws in spans:
            regions[:, hs, ws, :] = label
            label += 1
    windows = window_partition(regions, (window, window)).reshape(-1, window * window)  # nW, N
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def window_token_order(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Flat token order of ``roll(-shift)`` followed by window partitioning, as one index.

    Gathering a (N, H*W, C) map with it gives exactly Swin's (N * nW, window*window, C) windows in
    one copy instead of two (roll, then partition).
    """
    rows = (torch.arange(h) + shift) % h
    cols = (torch.arange(w) + shift) % w
    flat = (rows[:, None] * w + cols[None, :]).view(1, h, w, 1)
    return window_partition(flat, (window, window)).reshape(-1)


def guided_qkv(
    x: torch.Tensor,
    guidance: Optional[torch.Tensor],
    q: nn.Linear,
    k: nn.Linear,
    v: nn.Linear,
    term: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused ``[q | k | v]`` where ``q``/``k`` see ``[x || guidance]`` and ``v`` sees ``x`` only.

    ``W [x; g] = W_x x + W_g g``: the guidance term is projected on the guidance's own (broadcastable,
    smaller) shape once and added, instead of concatenating the guidance to every token.  ``term``
    is that projection (:func:`guidance_qkv_term`) computed beforehand; given at the output's full
    shape, it is added inside the matmul (oneDNN's fused add).
    """
    c = v.in_features
    weight = torch.cat([q.weight[:, :c], k.weight[:, :c], v.weight], dim=0)
    if term is None and guidance is None:
        return linear(x, weight, torch.cat([q.bias, k.bias, v.bias]))
    if term is None:
        term = guidance_qkv_term(guidance, q, k, v)
    if term.shape == (*x.shape[:-1], 3 * c):
        return linear(x, weight, residual=term)
    y = linear(x, weight)
    # under autocast the term is fp32: a mixed-dtype in-place add goes through a full copy
    return y.add_(term.to(y.dtype))


def guidance_qkv_term(guidance: torch.Tensor, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> torch.Tensor:
    """The part of :func:`guided_qkv` that does not depend on ``x``: ``[W_g g + b_q,k | b_v]``."""
    c = v.in_features
    bias = torch.cat([q.bias, k.bias, v.bias])
    g_qk = F.linear(guidance, torch.cat([q.weight[:, c:], k.weight[:, c:]], dim=0), bias[: 2 * c])
    return torch.cat([g_qk, bias[2 * c :].expand(*g_qk.shape[:-1], c)], dim=-1)


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

    def project_qkv(
        self, x: torch.Tensor, guidance: Optional[torch.Tensor], term: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Fused ``[q | k | v]`` (B, T, N, 3C) of (B, T, N, C) tokens and (B, 1, N, G) guidance.

        The guidance term is the same for every class, so it is projected once per image and
        broadcast over the class axis (``term``: that projection, precomputed).
        """
        return guided_qkv(x, guidance, self.q, self.k, self.v, term)

    def attend(self, qkv: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Multi-head attention within windows: (N, L, 3C) -> (N, L, C) (before ``proj``)."""
        return packed_attention(qkv, self.num_heads, mask)


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention block over each class's H x W cost map."""

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
        h, w = self.input_resolution
        mask = shifted_window_mask(h, w, window_size, shift_size) if shift_size else None
        # persistent for the shifted block only: it is a state-dict key of the official checkpoints
        self.register_buffer("attn_mask", mask)
        order = window_token_order(h, w, window_size, shift_size)
        identity = torch.equal(order, torch.arange(h * w))
        self.register_buffer("token_order", None if identity else order, persistent=False)
        self.register_buffer("token_restore", None if identity else order.argsort(), persistent=False)

    def _window_mask(self, num_maps: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
        # A 4-D (batch*windows, 1, L, L) mask keeps SDPA on its fused kernel (a 5-D broadcast does not).
        # The repeat is the same for every class slice of every image (5 MB per 16-class slice), so
        # it is kept for the slice sizes in use; a changed buffer (load_state_dict, .to) misses.
        if self.attn_mask is None:
            return None
        if _compiling():
            return self.attn_mask.to(dtype).unsqueeze(1).repeat(num_maps, 1, 1, 1)
        key = (num_maps, dtype, self.attn_mask.device, self.attn_mask.data_ptr(), self.attn_mask._version)
        cache = self.__dict__.setdefault("_mask_cache", {})
        mask = cache.get(key)
        if mask is None:
            if len(cache) >= 4:  # a full slice and the last, partial one, per vocabulary in use
                cache.pop(next(iter(cache)))
            mask = cache[key] = self.attn_mask.to(dtype).unsqueeze(1).repeat(num_maps, 1, 1, 1)
        return mask

    def windowed(
        self, x: torch.Tensor, guidance: Optional[torch.Tensor], term: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The block on tokens already in window order (``token_order``): (B, T, H*W, C) -> same.

        Everything but the attention acts per token, so the whole block runs in window order and
        only the (C-wide) input and output are permuted, not the 3C-wide q/k/v.  ``term``: the
        guidance's q/k/v term, precomputed (see :meth:`SwinTransformerBlockWrapper.forward`).
        """
        b, t, n, c = x.shape
        qkv = self.attn.project_qkv(self.norm1(x), guidance, term)  # B T HW 3C
        length = self.window_size * self.window_size
        out = self.attn.attend(qkv.view(-1, length, 3 * c), self._window_mask(b * t, qkv.dtype))
        x = linear(out.view(b, t, n, c), self.attn.proj.weight, self.attn.proj.bias, residual=x)
        mlp = self.mlp  # timm Mlp with exact GELU, no dropout, no norm: fc2(gelu(fc1(x)))
        hidden = linear(self.norm2(x), mlp.fc1.weight, mlp.fc1.bias, activation="gelu")
        return linear(hidden, mlp.fc2.weight, mlp.fc2.bias, residual=x)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T, H, W, C) cost embedding, (B, H, W, G) normalised guidance -> (B, T, H, W, C)."""
        b, t, h, w, c = x.shape
        x = _gather_tokens(x.reshape(b, t, h * w, c), self.token_order)
        if guidance is not None:
            guidance = _gather_tokens(guidance.reshape(b, 1, h * w, -1), self.token_order)
        x = self.windowed(x, guidance)
        return _gather_tokens(x, self.token_restore).view(b, t, h, w, c)


def _gather_tokens(x: torch.Tensor, order: Optional[torch.Tensor]) -> torch.Tensor:
    """Reorder the token axis (dim 2) of (B, T, N, C) tokens; identity for ``order=None``."""
    return x if order is None else x.index_select(2, order)


def _compose(first: Optional[torch.Tensor], second: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """Index taking tokens from ``first``'s order to ``second``'s order (None = original order)."""
    inverse = first.argsort() if first is not None else torch.arange(n, device=second.device if second is not None else None)
    order = inverse if second is None else inverse[second]
    return None if torch.equal(order, torch.arange(n, device=order.device)) else order


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
        n = input_resolution[0] * input_resolution[1]
        # block 1's window order -> block 2's window order, so the pair needs three token permutations
        self.register_buffer("order_between", _compose(self.block_1.token_order, self.block_2.token_order, n),
                             persistent=False)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], class_chunk: int = 0) -> torch.Tensor:
        """(B, T, H, W, C) embedding, (B, G, H, W) guidance -> (B, T, H, W, C).

        The guidance is normalised once per image (officially: once per class, same values).
        """
        b, t, h, w, c = x.shape
        g1 = g2 = None
        if guidance is not None:
            g = self.guidance_norm(_nhwc(guidance)).reshape(b, 1, h * w, -1)
            g1 = _gather_tokens(g, self.block_1.token_order)
            g2 = _gather_tokens(g, self.block_2.token_order)

        terms = self._bf16_qkv_terms(x, g1, g2, class_chunk)

        def pair(x_slice: torch.Tensor) -> torch.Tensor:
            n = x_slice.shape[1]
            t1, t2 = (None if term is None else term[:, :n] for term in terms)
            y = _gather_tokens(x_slice.reshape(b, n, h * w, c), self.block_1.token_order)
            y = self.block_1.windowed(y, g1, t1)
            return self.block_2.windowed(_gather_tokens(y, self.order_between), g2, t2)

        restore = self.block_2.token_restore
        slices = class_slices(t, class_chunk)
        if restore is not None and b == 1 and len(slices) > 1 and _fast_inference(x, autocast=True):
            # the last token permutation writes each slice straight into the output (no copy)
            out = None
            for s in slices:
                y = pair(x[:, s])
                if out is None:
                    out = y.new_empty((b, t, h * w, c))
                torch.index_select(y, 2, restore, out=out[:, s])
            return out.view(b, t, h, w, c)
        return over_class_slices(lambda s: _gather_tokens(pair(x[:, s]), restore).view(b, s.stop - s.start, h, w, c),
                                 t, class_chunk)

    def _bf16_qkv_terms(
        self, x: torch.Tensor, g1: Optional[torch.Tensor], g2: Optional[torch.Tensor], class_chunk: int
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Under bf16 autocast at inference on a CPU: each block's guidance q/k/v term, projected
        once per image and expanded to a class slice's full shape, so that every slice's q/k/v
        matmul adds it in oneDNN (a separate broadcast add over bf16 costs twice that matmul).
        Otherwise (None, None): fp32 adds the broadcast term itself, as fast as the fused add."""
        probe = self.block_1.attn.v.weight
        if g1 is None or not _fast_inference(x, autocast=True) or _onednn_linear_dtype(x, probe) != torch.bfloat16:
            return None, None
        b, t = x.shape[:2]
        n = class_slices(t, class_chunk)[0].stop
        pairs = ((self.block_1.attn, g1), (self.block_2.attn, g2))
        terms = (guidance_qkv_term(g, attn.q, attn.k, attn.v) for attn, g in pairs)
        return tuple(term.expand(b, n, -1, -1).to(torch.bfloat16).contiguous() for term in terms)


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
    re-normalised over keys.  Computed head-major with batched matmuls (same math as the official
    einsum form).
    """
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # N H L D
    if _fast_inference(q, autocast=True):
        # Scores stored transposed (N H S L): the softmax over queries runs along contiguous
        # memory, and the steps work in place (~25% faster on a CPU; equal up to ~3e-7).
        weights = torch.matmul(kh, qh.transpose(-1, -2)).div_(q.shape[-1] ** 0.5).softmax(dim=-1).add_(eps)
        weights.div_(weights.sum(dim=-2, keepdim=True))
        return torch.matmul(weights.transpose(-1, -2), vh).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) / q.shape[-1] ** 0.5  # N H L S
    weights = scores.softmax(dim=-2) + eps
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return torch.matmul(weights, vh).transpose(1, 2)


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
        """(B, P, T, C) tokens (P positions), (B, T, G) text guidance -> (B, P, T, C).

        The guidance depends on the class only, so its q/k term is projected once per image and
        broadcast over positions.
        """
        b, p, t, c = x.shape
        qkv = guided_qkv(x, None if guidance is None else guidance.unsqueeze(1), self.q, self.k, self.v)
        q, k, v = qkv.reshape(b * p, t, 3, self.nheads, -1).unbind(2)  # (N, L, H, D) each
        out = _CLASS_ATTENTION[self.attention_type](q, k, v)
        return out.reshape(b, p, t, c)


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

    def _mix(self, tokens: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens), guidance)
        fc1, fc2 = self.MLP[0], self.MLP[2]  # Linear, ReLU, Linear
        hidden = linear(self.norm2(tokens), fc1.weight, fc1.bias, activation="relu")
        return linear(hidden, fc2.weight, fc2.bias, residual=tokens)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], class_chunk: int = 0) -> torch.Tensor:
        """(B, T, H, W, C) embedding, (B, T, G) text guidance -> (B, T, H, W, C).

        With ``class_chunk`` the attention runs over slices of *positions* (each position attends
        over all classes on its own) sized so that the (positions x T x T) scores stay within
        ``class_chunk x positions x T``, and the upsampling over slices of classes.
        """
        b, t, h, w, c = x.shape
        pooled = _nhwc(self.pool(_nchw(x.reshape(b * t, h, w, c))))  # B*T hp wp C
        hp, wp = pooled.shape[1:3]
        tokens = pooled.reshape(b, t, hp * wp, c).transpose(1, 2)  # B P T C
        padded = self.pad_len > 0 and t < self.pad_len
        if padded:
            pad = self.pad_len - t
            tokens = torch.cat([tokens, self.padding_tokens.expand(b, hp * wp, pad, c)], dim=2)
            if guidance is not None:
                guidance = torch.cat([guidance, self.padding_guidance.expand(b, pad, -1)], dim=1)
        num_pos = hp * wp
        per_slice = max(1, class_chunk * num_pos // tokens.shape[2]) if class_chunk > 0 else 0
        source = tokens  # slices of positions (dim 1): each position attends over all classes
        tokens = over_class_slices(lambda s: self._mix(source[:, s], guidance), num_pos, per_slice)
        if padded:
            tokens = tokens[:, :, :t]

        if (hp, wp) != (h, w) and _fast_inference(x):
            return _upsample_add(x, tokens, hp, wp, class_chunk)

        def add_upsampled(s: slice) -> torch.Tensor:
            n = s.stop - s.start
            up = _nchw(tokens[:, :, s].transpose(1, 2).reshape(b * n, hp, wp, c))
            if (hp, wp) != (h, w):
                up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=True)
            return x[:, s] + _nhwc(up).reshape(b, n, h, w, c)

        return over_class_slices(add_upsampled, t, class_chunk)


def _fast_inference(x: torch.Tensor, autocast: bool = False) -> bool:
    """Inference-only rewrites (same math, float re-association only) apply: no autograd, not
    under ``torch.compile`` (which fuses on its own), fp32 -- or any autocast if ``autocast``.
    Training keeps the reference formulation."""
    if torch.is_grad_enabled() or _compiling():
        return False
    return autocast if _autocast_on() else x.dtype == torch.float32


def _bilinear_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bilinear resizing with ``align_corners=True``, read off
    ``F.interpolate`` of an identity (so they are exactly the kernel's own interpolation weights)."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device).view(1, n_in, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=True)[0, :, :, 0].t().contiguous()


def _upsample_add(x: torch.Tensor, tokens: torch.Tensor, hp: int, wp: int, class_chunk: int) -> torch.Tensor:
    """``x + bilinear_upsample(tokens)`` for (B, T, H, W, C) ``x`` and (B, hp*wp, T, C) pooled tokens.

    Bilinear resizing is separable, so it is two small matrix products per class (rows, then
    columns) written straight into the output, the second one adding ``x`` on the way
    (``baddbmm``).  ``F.interpolate`` on channels-last maps plus the add and the re-arranging
    copies around it cost about twice as much on a CPU.  Equal to the reference up to float
    re-association (~1e-7).
    """
    b, t, h, w, c = x.shape
    rows, cols = _bilinear_matrix(hp, h, x), _bilinear_matrix(wp, w, x)
    out = torch.empty_like(x)
    for s in class_slices(t, class_chunk):
        n = s.stop - s.start
        tok = tokens[:, :, s].transpose(1, 2).reshape(b * n, hp, wp * c)
        y = torch.matmul(rows, tok).view(b * n * h, wp, c)  # rows resized: (B n h) x wp x C
        args = (x[:, s].reshape(b * n * h, w, c), cols.expand(b * n * h, w, wp), y)
        dst = out[:, s]
        if dst.is_contiguous():  # batch 1: the slice is a block of the output
            torch.baddbmm(*args, out=dst.view(b * n * h, w, c))
        else:
            dst.copy_(torch.baddbmm(*args).view(b, n, h, w, c))
    return out


class AggregatorLayer(nn.Module):
    """One spatial (Swin) step followed by one class-attention step.

    ``grad_checkpointing``: in training, each step keeps only its input for the backward pass and is
    recomputed there (:mod:`.grad_checkpoint`); the per-class Swin activations dominate training memory.
    """

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
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.swin_block = SwinTransformerBlockWrapper(
            hidden_dim, appearance_guidance_dim, input_resolution, nheads, window_size
        )
        self.attention = ClassTransformerLayer(
            hidden_dim, text_guidance_dim, nheads, attention_type, pooling_size, pad_len
        )

    def forward(
        self,
        x: torch.Tensor,
        appearance_guidance: Optional[torch.Tensor],
        text_guidance: Optional[torch.Tensor],
        class_chunk: int = 0,
    ) -> torch.Tensor:
        """(B, T, H, W, C) -> (B, T, H, W, C)."""
        ckpt = self.grad_checkpointing and self.training
        if appearance_guidance is not None:
            x = checkpointed(self.swin_block, x, appearance_guidance, class_chunk, enabled=ckpt)
        if text_guidance is not None:
            x = checkpointed(self.attention, x, text_guidance, class_chunk, enabled=ckpt)
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

    def forward(self, x: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``extra`` (B, out, H, W) is added after the first convolution to every group of N/B maps."""
        first, rest = self.double_conv[0], self.double_conv[1:]
        if extra is None:
            return rest(first(x))
        y = F.conv2d(x, first.weight[:, : x.shape[1]], None, padding=1)
        b = extra.shape[0]
        y.view(b, y.shape[0] // b, *y.shape[1:]).add_(extra.unsqueeze(1))
        return rest(y)


class Up(nn.Module):
    """2x transposed-conv upsampling, concatenation with projected guidance, DoubleConv.

    The concatenation is never built: the first convolution is split into its feature part (per
    class) and its guidance part (per image, computed once) — ``conv([x; g]) = conv_x(x) + conv_g(g)``.
    """

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def guidance_term(self, guidance: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The guidance half of the first convolution, (B, out, H, W) (None without guidance)."""
        if guidance is None:
            return None
        first = self.conv.double_conv[0]
        term = F.conv2d(guidance, first.weight[:, first.in_channels - guidance.shape[1] :], None, padding=1)
        # the per-class maps it is added to are channels-last (see AggregatorBase.decode): a broadcast
        # add across memory formats is 2.5x slower than one in the same format
        return term.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], term: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B*T, C, h, w) per-class maps, (B, G, 2h, 2w) guidance -> (B*T, out, 2h, 2w)."""
        if term is None:
            term = self.guidance_term(guidance)
        return self.conv(self.up(x), term)


class AggregatorBase(nn.Module):
    """Parameters and steps every cost aggregator shares (official names kept for checkpoints).

    ``conv1`` embeds a P-template cost map into ``hidden_dim`` channels per class; the guidance
    projections map image features (appearance) and text features to the aggregation widths; the
    decoder (``decoder1``, ``decoder2``, ``head``) upsamples every class's embedding 4x to a logit.
    Sub-classes build their layers and define ``forward``.

    ``class_chunk`` (> 0) bounds inference memory: per-class steps run over slices of that many
    class maps, i.e. ``class_chunk // batch`` classes of every image (exact, see the module
    docstring).  It is ignored in training mode.  ``grad_checkpointing`` bounds training memory
    instead: every aggregation step and decoder stage is checkpointed (:meth:`set_grad_checkpointing`).
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
        class_chunk: int = 0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.hidden_dim = hidden_dim
        self.class_chunk = class_chunk
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

    @property
    def class_chunk(self) -> int:
        return self._class_chunk

    @class_chunk.setter
    def class_chunk(self, value: int) -> None:
        if int(value) < 0:
            raise ValueError(f"class_chunk={value!r}; expected 0 (off) or a positive number of classes")
        self._class_chunk = int(value)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the decoder stages and every :class:`AggregatorLayer` (all stages) in training."""
        self.grad_checkpointing = bool(enable)
        for module in self.modules():
            if isinstance(module, AggregatorLayer):
                module.grad_checkpointing = bool(enable)

    def profile_stages(self) -> dict[str, list[tuple[Any, str]]]:
        """Call points of the aggregator's steps (see ``SegmentationModel.profile_stages``)."""
        return {
            "cost embedding": [(self, "embed_cost")],
            "guidance projections": [(self, "project_guidance"), (self, "project_text")],
            "aggregation layers": [(layer, "forward") for layer in self.layers],
            "decoder": [(self, "decode")],
        }

    def active_chunk(self, batch_size: int = 1) -> int:
        """Classes per slice in effect: 0 (whole vocabulary) in training or when ``class_chunk`` is 0.

        ``class_chunk`` counts per-class maps over the batch (a slice holds ``batch_size`` images x
        classes), so a batch does not enlarge the working set of a slice.
        """
        if self.training or self._class_chunk <= 0:
            return 0
        return max(1, self._class_chunk // max(1, batch_size))

    @staticmethod
    def embed_cost(conv: nn.Conv2d, corr: torch.Tensor, class_chunk: int = 0) -> torch.Tensor:
        """(B, T, H, W, P) cost -> (B, T, H, W, hidden) with a per-class convolution."""
        b, t, h, w, p = corr.shape

        def embed(s: slice) -> torch.Tensor:
            n = s.stop - s.start
            return _nhwc(conv(_nchw(corr[:, s].reshape(b * n, h, w, p)))).reshape(b, n, h, w, -1)

        return over_class_slices(embed, t, class_chunk)

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

    def decode(self, x: torch.Tensor, guidance: Sequence, class_chunk: int = 0) -> torch.Tensor:
        """(B, T, h, w, C) aggregated cost -> (B, T, 4h, 4w) logits, optionally over class slices."""
        b, t, h, w, c = x.shape
        terms = [self.decoder1.guidance_term(guidance[0]), self.decoder2.guidance_term(guidance[1])]
        ckpt = self.grad_checkpointing and self.training

        def last_stage(y: torch.Tensor, g: Optional[torch.Tensor], term: Optional[torch.Tensor]) -> torch.Tensor:
            return self.head(self.decoder2(y, g, term))

        def decode_slice(s: slice) -> torch.Tensor:
            n = s.stop - s.start
            y = _nchw(x[:, s].reshape(b * n, h, w, c))
            y = checkpointed(self.decoder1, y, guidance[0], terms[0], enabled=ckpt)
            # the head shares decoder2's segment: its 4x-resolution input is then not kept
            y = checkpointed(last_stage, y, guidance[1], terms[1], enabled=ckpt)
            return y.reshape(b, n, *y.shape[-2:])

        return over_class_slices(decode_slice, t, class_chunk)


def cosine_cost(img_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """Cosine cost volume (B, T, H, W, P) between (B, C, H, W) image and (B, T, P, C) text features.

    Class-major and channels-last (the official ``(B, P, T, H, W)`` is ``.permute(0, 4, 1, 2, 3)``).
    """
    b, c, h, w = img_feats.shape
    t, p = text_feats.shape[1:3]
    img = F.normalize(img_feats, dim=1).reshape(b, c, h * w)
    text = F.normalize(text_feats, dim=-1).reshape(b, t * p, c)
    corr = torch.bmm(img.transpose(1, 2), text.transpose(1, 2))  # B HW TP
    return corr.view(b, h, w, t, p).permute(0, 3, 1, 2, 4).contiguous()
