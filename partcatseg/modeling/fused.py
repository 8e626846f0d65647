"""Fused building blocks shared by the aggregator, the CLIP blocks and the CLIPSeg layers.

``packed_attention`` runs multi-head attention from one packed ``[q | k | v]`` projection through
``scaled_dot_product_attention`` (torch's fused kernels), with no copy of q, k or v.

``linear`` computes ``activation(x W^T + b)`` or ``residual + x W^T + b`` with the activation or
the residual add fused into oneDNN's matmul when the call is CPU inference (no autograd, fp32 or
bf16 autocast), and with ``F.linear`` otherwise (training, fp16, other devices, ``torch.compile``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["ONEDNN_LINEAR", "linear", "packed_attention"]


# Linear layers at inference go through oneDNN when this torch has it: same math, but on CPUs where
# MKL's sgemm does not use AVX-512 (AMD) it is 1.2-2x faster, and the GELU/ReLU or the residual add
# is fused into the matmul.  Training, fp16 autocast and non-CPU tensors use F.linear.
ONEDNN_LINEAR = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _compiling() -> bool:
    # under torch.compile the compiler does its own (oneDNN) linear fusion
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _onednn_linear_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype the fused oneDNN linear runs in, or None for ``F.linear``.

    fp32 without autocast; bfloat16 under CPU bf16 autocast (TEST.AMP bf16) when oneDNN has bf16
    kernels: the operands are cast as autocast would cast them for ``F.linear``, and the GELU/ReLU
    or residual add is applied to the fp32 accumulator before the one rounding to bf16 (unfused,
    autocast rounds the matmul to bf16 and then runs GELU in a second pass over memory).
    """
    if not ONEDNN_LINEAR or x.device.type != "cpu" or torch.is_grad_enabled() or _compiling():
        return None
    if not _autocast_on():
        return torch.float32 if x.dtype == weight.dtype == torch.float32 else None
    if _cpu_autocast_dtype() == torch.bfloat16 and _ONEDNN_BF16:
        return torch.bfloat16
    return None


def _cpu_autocast_dtype() -> torch.dtype:
    try:
        return torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype()


_ONEDNN_BF16 = ONEDNN_LINEAR and bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    activation: str = "none",
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``activation(x W^T + b)``, or ``residual + x W^T + b``; oneDNN-fused on CPU inference."""
    dtype = _onednn_linear_dtype(x, weight)
    if dtype is not None:
        # oneDNN falls back to a very slow reference kernel for strided operands
        x, weight = x.to(dtype).contiguous(), weight.to(dtype).contiguous()
        bias = None if bias is None else bias.to(dtype)
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual.to(dtype).contiguous(), weight, bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none" if activation == "gelu" else "")
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    elif activation == "relu":
        y = F.relu(y)
    elif activation != "none":
        raise ValueError(f"activation={activation!r}; expected 'none', 'relu' or 'gelu'")
    return y if residual is None else residual + y


def packed_attention(
    qkv: torch.Tensor, num_heads: int, mask: Optional[torch.Tensor] = None, scale: Optional[float] = None
) -> torch.Tensor:
    """Multi-head self-attention of a packed (B, N, 3D) ``[q | k | v]`` projection -> (B, N, D).

    ``scale`` None is SDPA's default, ``1 / sqrt(head_dim)``.
    """
    b, n, three_d = qkv.shape
    q, k, v = qkv.view(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, n, three_d // 3)
