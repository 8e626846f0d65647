"""Inference speed settings: class chunking (default, exact) and the opt-in modes.

* **Class chunks** (``TEST.CLASS_CHUNK``): the aggregator runs its per-class steps over slices of
  classes.  Exact (same numbers as one pass over the vocabulary), memory bounded by the slice, and
  faster on a CPU because each slice's working set stays in cache; ``0`` sizes the slices by
  :data:`AUTO_CHUNK_BYTES` (16 classes for the full-size models on a CPU, 128 on a GPU).  A value
  at least the vocabulary size processes all classes at once.
* **Autocast** (``TEST.AMP`` = ``"bf16"`` / ``"fp16"``): image encoders and aggregator under
  ``torch.autocast``; text features stay fp32 (they are cached) and outputs are returned in fp32.
  bf16 is fast on CPUs with AVX-512 BF16 / AMX; fp16 is for GPUs (CPU fp16 kernels are slow).
* **channels_last** (``MODEL.CHANNELS_LAST``): 4-D weights and image batches in NHWC memory format
  (matters for the ResNet guidance backbone; the aggregator is channels-last already).
* **torch.compile** (``MODEL.COMPILE``): the encoders and the aggregator are compiled in place
  (``nn.Module.compile``: state-dict keys unchanged); the first calls pay the compilation.

The meta-architectures take these as constructor arguments (``class_chunk`` for the aggregator,
``inference_amp``, ``channels_last``, ``compile``), mapped from the config in
:mod:`partcatseg.modeling.config_map`. The accuracy deltas of the opt-in modes against fp32 are
measured by ``tools/benchmark.py --phases accuracy`` and reported in the README.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterable, Optional, Sequence

import torch
from torch import nn

from ..config.defaults import AMP_MODES

__all__ = [
    "AUTO_CHUNK_BYTES",
    "AUTO_CHUNK_BYTES_CUDA",
    "auto_class_chunk",
    "AMP_MODES",
    "resolve_class_chunk",
    "amp_dtype",
    "autocast_context",
    "apply_channels_last",
    "compile_modules",
]

# TEST.CLASS_CHUNK = 0 sizes slices so that one slice's cost embedding takes about this many bytes:
# 16 classes of the full-size 24x24x128 aggregator, the fastest of 8/16/32/64/all measured on a
# 2-core CPU (tiny test models get one slice: their per-slice overhead would dominate).
AUTO_CHUNK_BYTES = 16 * 24 * 24 * 128 * 4
# A GPU needs larger slices to stay busy: 128 full-size classes per slice (memory stays bounded).
# Not tuned on a GPU here (none available); set TEST.CLASS_CHUNK to override.
AUTO_CHUNK_BYTES_CUDA = 8 * AUTO_CHUNK_BYTES
# The mode names are the config's (TEST.AMP, SOLVER.AMP.DTYPE); this is their one torch dtype table.
_AMP_DTYPES: dict[str, Optional[torch.dtype]] = dict(zip(AMP_MODES, (None, torch.bfloat16, torch.float16)))


def auto_class_chunk(feature_resolution: Sequence[int], hidden_dim: int, device: str = "cpu") -> int:
    """Classes per slice for an aggregator of this size under :data:`AUTO_CHUNK_BYTES` (``_CUDA`` on a GPU)."""
    h, w = feature_resolution
    budget = AUTO_CHUNK_BYTES_CUDA if str(device).startswith("cuda") else AUTO_CHUNK_BYTES
    return max(1, budget // (h * w * hidden_dim * 4))


def resolve_class_chunk(value: int, feature_resolution: Sequence[int], hidden_dim: int, device: str = "cpu") -> int:
    """``TEST.CLASS_CHUNK`` -> classes per slice (0 = :func:`auto_class_chunk`)."""
    value = int(value)
    if value < 0:
        raise ValueError(f"TEST.CLASS_CHUNK={value}: expected 0 (automatic) or a positive number of classes")
    return value or auto_class_chunk(feature_resolution, hidden_dim, device)


def amp_dtype(mode: Optional[str]) -> Optional[torch.dtype]:
    """``""``/None -> None (fp32), ``"bf16"`` -> bfloat16, ``"fp16"`` -> float16."""
    mode = mode or ""
    if mode not in _AMP_DTYPES:
        raise ValueError(f"AMP mode {mode!r}: expected one of {list(AMP_MODES)} ('' = fp32)")
    return _AMP_DTYPES[mode]


def autocast_context(device: torch.device | str, mode: Optional[str]) -> ContextManager:
    """``torch.autocast`` for ``mode`` on ``device`` (a no-op context for fp32)."""
    dtype = amp_dtype(mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def apply_channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D parameters/buffers in channels-last order (values and keys unchanged)."""
    return model.to(memory_format=torch.channels_last)


def compile_modules(modules: Iterable[Optional[nn.Module]], **kwargs: Any) -> None:
    """``nn.Module.compile`` each module in place: the module tree, and so the checkpoint keys, stay."""
    for module in modules:
        if module is not None:
            module.compile(**kwargs)
