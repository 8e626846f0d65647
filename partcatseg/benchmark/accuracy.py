"""Accuracy cost of the speed settings: each mode's outputs against the default fp32 path.

Used by the benchmark's ``accuracy`` phase (``tools/benchmark.py --phases accuracy``) and by the
slow test that guards the README's figures.  The reference is the model as built (fp32, automatic
class chunk); every mode is a model built with that mode's config keys (:data:`MODE_OPTS`) and the
same weights, run on the same record and compared on the probabilities of all classes
(``sem_seg_all``; ``sem_seg`` for semantic models):

* ``one_pass``      class chunking off (all classes at once): shows chunking is exact;
* ``bf16``/``fp16`` ``TEST.AMP`` autocast;
* ``channels_last`` ``MODEL.CHANNELS_LAST``;
* ``compile``       ``MODEL.COMPILE`` (``torch.compile``; minutes of compilation on a CPU).

``argmax_agreement`` is the fraction of pixels whose top class is unchanged.  It is meaningful for
trained weights; with rule-filled or random weights the classes' probabilities differ by less
than the reduced-precision error (see ``ref_top2_margin_median``), so it mostly measures ties.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["ACCURACY_MODES", "DEFAULT_ACCURACY_MODES", "MODE_OPTS", "compare_outputs", "mode_deltas", "load_fixture"]

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
        outputs = model(records)
    key = "sem_seg_all" if model.task == "part" else "sem_seg"
    return [r[key].float().cpu() for r in outputs]


# mode -> the config keys that select it (a model built with them, the reference's weights loaded)
MODE_OPTS: dict[str, tuple[str, ...]] = {
    "one_pass": ("TEST.CLASS_CHUNK", str(1 << 30)),
    "bf16": ("TEST.AMP", "bf16"),
    "fp16": ("TEST.AMP", "fp16"),
    "channels_last": ("MODEL.CHANNELS_LAST", "True"),
    "compile": ("MODEL.COMPILE", "True"),
}


def mode_deltas(
    model: nn.Module,
    build: Callable[[Sequence[str]], nn.Module],
    records: list[dict],
    modes: Sequence[str] = DEFAULT_ACCURACY_MODES,
) -> dict[str, Any]:
    """Each mode's :func:`compare_outputs` against ``model``'s own outputs on ``records``.

    ``build(opts)`` returns a model configured with the extra config ``opts`` and ``model``'s weights.
    """
    unknown = [m for m in modes if m not in ACCURACY_MODES]
    if unknown:
        raise ValueError(f"unknown accuracy modes {unknown}; expected some of {list(ACCURACY_MODES)}")
    ref = _probabilities(model.eval(), records)
    out: dict[str, Any] = {"reference": {"top2_margin_median": _top2_margin(ref), **model.describe()}}
    for mode in modes:
        variant = build(MODE_OPTS[mode]).eval()
        out[mode] = compare_outputs(_probabilities(variant, records), ref)
        del variant
    return out


def load_fixture(path: str) -> dict[str, Any]:
    """A parity fixture's image, object and config options (tensors and plain data only)."""
    try:
        fx = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"parity fixture not found: {path}") from None
    missing = [k for k in ("config", "opts", "image", "height", "width", "gt_object_class") if k not in fx]
    if missing:
        raise KeyError(f"{path} is not a parity fixture: missing keys {missing}")
    return fx
