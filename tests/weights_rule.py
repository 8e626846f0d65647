"""The reference fixtures' weight rule and record, shared by the parity tests.

The official implementation was run on rule-filled weights (``tests/data/partcatseg_voc_single_prompt.pt``
was produced that way; README "Numerical parity"): each floating-point state-dict entry is drawn from a
generator seeded with the CRC-32 of its checkpoint key, so any implementation with the same keys gets the
same weights without shipping them.

    python tests/weights_rule.py FIXTURE OUT.pth   # the fixture's rule weights as a checkpoint
                                                   # (e.g. for tools/benchmark.py --phases accuracy --weights)
"""
from __future__ import annotations

import os
import sys
import zlib
from typing import Any, Sequence

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout, for scripts
from partcatseg.benchmark.accuracy import load_fixture  # noqa: E402  (the fixture reader the benchmark uses)

__all__ = ["rule_tensor", "rule_state_dict", "load_fixture", "fixture_record", "load_rule_weights"]


def rule_tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The value the fill rule gives the checkpoint entry ``key`` of ``shape``."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    t = torch.randn(tuple(shape), generator=g) * 0.02
    if key.endswith("logit_scale"):
        t = torch.full(tuple(shape), 4.6052)
    elif len(shape) == 1 and key.endswith(".weight"):
        t = t + 1.0
    return t


def rule_state_dict(model: nn.Module, skip: tuple[str, ...] = ("attn_mask",)) -> dict[str, torch.Tensor]:
    """Rule-filled copy of ``model.state_dict()`` (keys ending in ``skip`` and integer buffers keep
    the model's value)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith(skip) or not value.is_floating_point():
            out[key] = value.clone()
        else:
            out[key] = rule_tensor(key, value.shape)
    return out


def fixture_record(fx: dict[str, Any]) -> dict[str, Any]:
    """The fixture's test record (Oracle-Obj: it carries the ground-truth object)."""
    return {"image": fx["image"], "height": fx["height"], "width": fx["width"], "object_class": fx["gt_object_class"]}


def load_rule_weights(model: nn.Module, fx: dict[str, Any]) -> nn.Module:
    """Load the fixture's weights into ``model``: the rule, plus the stored background embedding."""
    sd = rule_state_dict(model)
    if "non_object_embedding" in fx:
        sd["sem_seg_head.predictor.non_object_embedding"] = fx["non_object_embedding"]
    model.load_state_dict(sd, strict=True)
    return model


def main(argv=None) -> int:
    """Write the fixture's rule-filled weights (for its config) as a detectron2-format checkpoint."""
    import argparse

    from partcatseg.config import setup_cfg
    from partcatseg.modeling import build_model

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("fixture")
    p.add_argument("output")
    args = p.parse_args(argv)
    fx = load_fixture(args.fixture)
    model = build_model(setup_cfg(fx["config"], list(fx["opts"]) + ["MODEL.DEVICE", "cpu"]))
    torch.save({"model": load_rule_weights(model, fx).state_dict()}, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
