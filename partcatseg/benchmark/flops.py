"""How close a phase runs to the machine's limit: executed FLOPs, a measured matmul peak, their ratio.

The ceiling is *measured*, not taken from a data sheet: the best rate of large square ``torch.mm``
calls on the same device, dtype and thread count the phases use. A phase's fraction of it is its
executed FLOPs (``torch.utils.flop_counter``: matmuls, convolutions, attention; element-wise work
counts as zero) divided by its median time. Activation checkpointing's recomputation is executed
work and is counted.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Optional

__all__ = ["PEAK_DTYPES", "count_flops", "matmul_peak", "add_utilization"]

#: dtypes whose matmul peak is measured (fp16 only where it has fast kernels: CUDA)
PEAK_DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")}


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _prod(shape: Any) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


@functools.lru_cache(maxsize=None)
def _extra_formulas() -> dict:
    """FLOP formulas for the kernels our CPU inference calls that torch's counter does not know.

    Built once per process, on first use (the ops it looks up are registered when torch loads), so that
    repeated ``count_flops`` calls do not redo the look-ups. The dict is shared: callers must not modify
    it (``FlopCounterMode`` copies its ``custom_mapping``).

    oneDNN's fused linear (``mkldnn._linear_pointwise``, the aggregator's inference linears) and the
    CPU flash attention (``_scaled_dot_product_flash_attention_for_cpu``, forward and backward) would
    otherwise count as zero, and fp32 inference would look like less work than the same model under
    autocast (which takes the plain paths). The formulas receive shapes (torch's ``shape_wrapper``).
    """
    import torch
    from torch.utils import flop_counter

    def linear_pointwise(*args, out_shape=None, **kwargs) -> int:
        # the counter looks formulas up by op packet: (x, w, b, attr, scalars, algorithm) for the plain
        # overload, (x, other, w, b, attr) for ``.binary``; the attribute string tells them apart
        x_shape, w_shape = args[0], (args[1] if isinstance(args[3], str) else args[2])
        return 2 * _prod(x_shape[:-1]) * int(w_shape[0]) * int(w_shape[1])

    def sdpa_cpu(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(q_shape, k_shape, v_shape)

    def sdpa_cpu_backward(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)

    formulas: dict = {}
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if mkldnn is not None and hasattr(mkldnn, "_linear_pointwise"):
        formulas[mkldnn._linear_pointwise] = linear_pointwise
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = sdpa_cpu
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = sdpa_cpu_backward
    return formulas


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs ``fn()`` executes (forward and, if it runs one, backward), counted by torch's flop counter
    plus the formulas of :func:`_extra_formulas`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_peak(device: str, dtype: str, size: Optional[int] = None, repeats: int = 5,
                min_seconds: float = 0.2) -> dict[str, Any]:
    """The best and median GFLOP/s of ``size x size`` matmuls (2 n^3 FLOPs each) in ``dtype``.

    ``size`` defaults to 2048 on the CPU (a few hundred ms per call at these rates) and 8192 on CUDA.
    Each repeat runs enough calls to last ``min_seconds`` so that timer and launch overheads vanish.
    """
    import torch

    from .measure import sync

    n = size or (8192 if device.startswith("cuda") else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=_torch_dtype(dtype))
    b = torch.randn(n, n, generator=g).to(device=device, dtype=_torch_dtype(dtype))
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)  # warm-up: kernel selection, packing buffers
    sync(device)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    sync(device)
    calls = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        sync(device)
        rates.append(2.0 * n**3 * calls / (time.perf_counter() - start) / 1e9)
    rates.sort()
    return {"dtype": dtype, "size": n, "calls_per_repeat": calls, "gflops_best": rates[-1],
            "gflops_median": rates[len(rates) // 2]}


def _rate(gflop: float, seconds: float, peaks: dict, dtype: str) -> dict[str, Any]:
    # unrounded: a small model's rates are fractions of a GFLOP/s
    out: dict[str, Any] = {"gflop": gflop, "gflops_per_second": gflop / seconds, "compute_dtype": dtype}
    peak = peaks.get(dtype)
    if peak:
        out["fraction_of_peak"] = gflop / seconds / peak["gflops_best"]
    return out


def add_utilization(report: dict[str, Any]) -> None:
    """Add achieved GFLOP/s and the fraction of the measured peak to every phase that counted FLOPs.

    Inference: per image at batch 1 (and at ``--batch-size``); the stage profile: the forward and each
    stage; training: per optimizer step. The
    peak is that of the dtype the phase computes in (``compute_dtype``), from the ``matmul_peak`` phase.
    """
    peaks = report["phases"].get("matmul_peak", {}).get("peaks", {})
    for name, res in report["phases"].items():
        if not isinstance(res, dict) or "gflop_per_image" not in res and "gflop_per_step" not in res:
            continue
        dtype = res.get("compute_dtype", "fp32")
        if "stages" in res:  # the per-stage profile: the whole forward and each stage with FLOPs
            res["utilization"] = _rate(res["gflop_per_image"], res["seconds"]["median"], peaks, dtype)
            for stage in res["stages"].values():
                if stage.get("gflop") and stage["seconds"]["median"] > 0:
                    stage["utilization"] = _rate(stage["gflop"], stage["seconds"]["median"], peaks, dtype)
        elif "gflop_per_image" in res:
            for key in (k for k in res if k.startswith("batch_")):
                res[key]["utilization"] = _rate(res["gflop_per_image"], res[key]["seconds_per_image"]["median"],
                                                peaks, dtype)
        else:
            res["utilization"] = _rate(res["gflop_per_step"], res["seconds"]["median"], peaks, dtype)
