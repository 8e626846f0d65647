"""Accuracy cost of the speed settings: each mode's outputs against the default fp32 path.

Used by the benchmark's ``accuracy`` phase (``tools/benchmark.py --phases accuracy``) and by the
slow test that guards the README's figures.  The reference is the model as built (fp32, automatic
class chunk); every mode is applied to the same weights and the same record, and compared on the
probabilities of all classes (``sem_seg_all``):

* ``one_pass``      class chunking off (all classes at once): shows chunking is exact;
* ``bf16``/``fp16`` ``TEST.AMP`` autocast;
* ``channels_last`` ``MODEL.CHANNELS_LAST``;
* ``compile``       ``MODEL.COMPILE`` (``torch.compile``; minutes of compilation on a CPU).

``argmax_agreement`` is the fraction of pixels whose top class is unchanged.  It is meaningful for
trained weights; with rule-filled or random weights the classes' probabilities differ by less
than the reduced-precision error (see ``ref_top2_margin_median``), so it mostly measures ties.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["ACCURACY_MODES", "DEFAULT_ACCURACY_MODES", "compare_outputs", "mode_deltas"]

ACCURACY_MODES = ("one_pass", "bf16", "fp16", "channels_last", "compile")
DEFAULT_ACCURACY_MODES = ("one_pass", "bf16", "fp16", "channels_last")


def _flat(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T, H_i, W_i) per-record maps -> one (T, sum of H_i*W_i) matrix."""
    return torch.cat([m.float().cpu().flatten(1) for m in maps], dim=1)


def compare_outputs(out: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> dict[str, float]:
    """Largest and mean |difference| and argmax agreement (over the class axis) of per-record
    (T, H, W) probability maps."""
    shapes = [tuple(o.shape) for o in out], [tuple(r.shape) for r in ref]
    if shapes[0] != shapes[1]:
        raise ValueError(f"output shapes {shapes[0]} differ from the reference shapes {shapes[1]}")
    out, ref = _flat(out), _flat(ref)
    d = (out - ref).abs()
    agree = (out.argmax(0) == ref.argmax(0)).float().mean().item()
    return {"max_abs_diff": d.max().item(), "mean_abs_diff": d.mean().item(), "argmax_agreement": agree}


def _top2_margin(maps: Sequence[torch.Tensor]) -> float:
    """Median gap between the two most probable classes of a pixel."""
    probs = _flat(maps)
    if probs.shape[0] < 2:
        return float("nan")
    top = probs.topk(2, dim=0).values
    return (top[0] - top[1]).median().item()


def _probabilities(model: nn.Module, records: list[dict]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [r["sem_seg_all"].float().cpu() for r in model(records)]


def _with_setting(model: nn.Module, target: Any, attr: str, value: Any) -> Callable[[list[dict]], list[torch.Tensor]]:
    """Run ``model`` with ``target.attr = value`` for the call only."""

    def run(records: list[dict]) -> list[torch.Tensor]:
        old = getattr(target, attr)
        setattr(target, attr, value)
        try:
            return _probabilities(model, records)
        finally:
            setattr(target, attr, old)

    return run


def _on_copy(model: nn.Module, transform: Callable[[nn.Module], nn.Module]) -> Callable[[list[dict]], list[torch.Tensor]]:
    def run(records: list[dict]) -> list[torch.Tensor]:
        return _probabilities(transform(copy.deepcopy(model)), records)

    return run


def mode_deltas(model: nn.Module, records: list[dict], modes: Sequence[str] = DEFAULT_ACCURACY_MODES) -> dict[str, Any]:
    """Each mode's :func:`compare_outputs` against ``model``'s own outputs on ``records``.

    ``model`` is left as it was (modes that change the module run on a deep copy).
    """
    from .modeling.speed import apply_channels_last, compile_in_place

    unknown = [m for m in modes if m not in ACCURACY_MODES]
    if unknown:
        raise ValueError(f"unknown accuracy modes {unknown}; expected some of {list(ACCURACY_MODES)}")
    model = model.eval()
    ref = _probabilities(model, records)
    runners = {
        "one_pass": lambda: _with_setting(model, model.aggregator, "class_chunk", 1 << 30),
        "bf16": lambda: _with_setting(model, model, "inference_amp", "bf16"),
        "fp16": lambda: _with_setting(model, model, "inference_amp", "fp16"),
        "channels_last": lambda: _on_copy(model, apply_channels_last),
        "compile": lambda: _on_copy(model, compile_in_place),
    }
    out: dict[str, Any] = {"reference": {"top2_margin_median": _top2_margin(ref),
                                         "class_chunk": getattr(model.aggregator, "class_chunk", None)}}
    for mode in modes:
        out[mode] = compare_outputs(runners[mode]()(records), ref)
    return out
