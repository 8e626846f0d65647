"""Activation checkpointing (``MODEL.GRADIENT_CHECKPOINTING``): same losses and gradients, less memory kept
for the backward pass, training only.

Gradients are compared with ``torch.equal``: the recomputation runs the same kernels on the same inputs
in the same order on the CPU, so checkpointing changes no bit (fp32 and bf16 autocast alike).
"""
from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint
from conftest import REPO

from partcatseg.config import ConfigError, get_cfg, setup_cfg
from partcatseg.data.datasets import dataset_root, make_toy_dataset
from partcatseg.engine.runner import train_loader_from_config
from partcatseg.modeling import build_model
from partcatseg.modeling.aggregator import AggregatorLayer
from partcatseg.modeling.catseg import CATSeg
from partcatseg.modeling.catseg_aggregator import CATSegAggregator
from partcatseg.modeling.clip import build_clip, split_qkv_projections
from partcatseg.modeling.text import TextFeatureCache
from partcatseg.vocab import Vocabulary

TOY_CFG = str(REPO / "configs/toy/partcatseg_toy.yaml")


def _toy_cfg(root, *opts):
    return setup_cfg(TOY_CFG, ["MODEL.DEVICE", "cpu", "MODEL.TEXT_CACHE_DIR", str(root / "text"),
                               "SOLVER.IMS_PER_BATCH", "2", *opts])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy PartCATSeg (CLIP attention, DINOv2 and both aggregator stages train) and one loader batch."""
    root = tmp_path_factory.mktemp("ckpt_toy")
    make_toy_dataset(str(root / "ToyPart"), seed=0, num_train=4, num_val=1, progress=False)
    cfg = _toy_cfg(root)
    with dataset_root(str(root)):
        batch = next(iter(train_loader_from_config(cfg)))
    torch.manual_seed(0)
    return root, build_model(cfg), batch


def _loss_and_grads(model, batch, enabled: bool, loss_key: str = "loss_sem_seg"):
    model.set_grad_checkpointing(enabled)
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(batch)
    losses[loss_key].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in losses.items()}, grads


def _assert_identical(a, b):
    (losses_a, grads_a), (losses_b, grads_b) = a, b
    assert losses_a.keys() == losses_b.keys()
    for key in losses_a:
        assert torch.equal(losses_a[key], losses_b[key]), key
    assert grads_a.keys() == grads_b.keys()
    different = [n for n in grads_a if not torch.equal(grads_a[n], grads_b[n])]
    assert different == []


class _CountCheckpoints:
    """Counts :func:`torch.utils.checkpoint.checkpoint` calls (and still runs them)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = torch.utils.checkpoint.checkpoint

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for the backward pass of one training forward (distinct storages)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch)
    return sum(storages.values())


# ------------------------------------------------------------------------------------ PartCATSeg
def test_partcatseg_gradients_identical_with_checkpointing(toy):
    _, model, batch = toy
    off = _loss_and_grads(model, batch, False)
    on = _loss_and_grads(model, batch, True)
    _assert_identical(off, on)
    grads = off[1]
    # every checkpointed part trains in the toy config, so the comparison covers all of them
    for prefix in ("sem_seg_head.predictor.clip_model.visual.transformer.resblocks.0.attn",
                   "backbone.dinov2.blocks.0.", "sem_seg_head.predictor.transformer.layers.0.swin_block.",
                   "sem_seg_head.predictor.transformer.layers.1.attention.",
                   "sem_seg_head.predictor.transformer.layers_specific_part.1.",
                   "sem_seg_head.predictor.transformer.decoder2.", "sem_seg_head.predictor.transformer.head.",
                   "sem_seg_head.predictor.transformer.conv_proj_feat."):
        assert any(n.startswith(prefix) for n in grads), prefix


def test_partcatseg_gradients_identical_under_bf16_autocast(toy):
    _, model, batch = toy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        off = _loss_and_grads(model, batch, False)
        on = _loss_and_grads(model, batch, True)
    _assert_identical(off, on)


def test_checkpointing_engages_in_training_only(toy, monkeypatch):
    _, model, batch = toy
    agg = model.aggregator
    expected = (
        len(model.clip_model.visual.transformer.resblocks) - 1  # the last block's dense path is not
        + len(model.backbone.dinov2.blocks)
        + 2 * (len(agg.layers) + len(agg.layers_specific_part))  # Swin step + class attention per layer
        + 2 * 2  # decoder1, decoder2 + head; both stages
        + 1  # the stage-2 cost
    )
    counter = _CountCheckpoints(monkeypatch)
    model.set_grad_checkpointing(False)
    model.train()
    model(batch)
    assert counter.calls == 0

    model.set_grad_checkpointing(True)
    model(batch)
    assert counter.calls == expected

    counter.calls = 0
    with torch.no_grad():  # training mode without autograd: nothing to keep, nothing checkpointed
        model(batch)
    model.eval()
    records = [{"image": r["image"], "height": 40, "width": 50} for r in batch]
    outputs_on = model(records)
    assert counter.calls == 0
    model.set_grad_checkpointing(False)
    outputs_off = model(records)
    for a, b in zip(outputs_on, outputs_off):
        assert torch.equal(a["sem_seg"], b["sem_seg"]) and torch.equal(a["sem_seg_all"], b["sem_seg_all"])


def test_checkpointing_keeps_far_fewer_activations(toy):
    _, model, batch = toy
    model.train()
    model.set_grad_checkpointing(False)
    full = _saved_bytes(model, batch)
    model.set_grad_checkpointing(True)
    kept = _saved_bytes(model, batch)
    model.set_grad_checkpointing(False)
    # what stays: the checkpointed steps' inputs, the loss and the few steps outside them
    assert kept < 0.35 * full, (kept, full)  # 0.20 here; 0.12 for the full-size PartCATSeg VOC model


def test_config_key_reaches_the_modules_and_defaults_off(toy):
    root, model, _ = toy
    assert get_cfg().MODEL.GRADIENT_CHECKPOINTING is False
    model.set_grad_checkpointing(False)
    torch.manual_seed(0)
    on = build_model(_toy_cfg(root, "MODEL.GRADIENT_CHECKPOINTING", "True"))
    torch.manual_seed(0)
    off = build_model(_toy_cfg(root))
    for m, flag in ((on, True), (off, False)):
        assert m.grad_checkpointing is flag
        assert m.backbone.grad_checkpointing is flag and m.aggregator.grad_checkpointing is flag
        layers = [x for x in m.aggregator.modules() if isinstance(x, AggregatorLayer)]
        assert len(layers) == 6 and all(x.grad_checkpointing is flag for x in layers)
    assert list(on.state_dict()) == list(off.state_dict())  # flags are not checkpoint keys
    on.set_grad_checkpointing(False)
    assert not any(getattr(x, "grad_checkpointing", False) for x in on.modules())


def test_unsupported_model_refuses_the_key(tmp_path):
    cfg = setup_cfg(str(REPO / "configs/toy/partclipseg_toy.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.GRADIENT_CHECKPOINTING", "True"])
    with pytest.raises(ConfigError, match="GRADIENT_CHECKPOINTING"):
        build_model(cfg)


# ------------------------------------------------------------------------------------ CAT-Seg
def test_catseg_baseline_gradients_identical(toy):
    root = toy[0]
    cfg = setup_cfg(str(REPO / "configs/toy/catseg_toy.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.TEXT_CACHE_DIR", str(root / "text"), "SOLVER.IMS_PER_BATCH", "2",
                     "MODEL.GRADIENT_CHECKPOINTING", "True"])
    with dataset_root(str(root)):
        batch = next(iter(train_loader_from_config(cfg)))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.grad_checkpointing and model.backbone.grad_checkpointing
    _assert_identical(_loss_and_grads(model, batch, False), _loss_and_grads(model, batch, True))


# ------------------------------------------------------------------------------------ CAT-Seg CVPR
def _tiny_catseg() -> CATSeg:
    torch.manual_seed(0)
    clip_model = build_clip("", tiny=dict(embed_dim=32, width=64, layers=3, heads=2, patch_size=16, image_size=64,
                                          text_width=32, text_layers=2, text_heads=2))
    split_qkv_projections(clip_model)
    aggregator = CATSegAggregator(
        text_guidance_dim=32, text_guidance_proj_dim=16, appearance_guidance_dim=32, appearance_guidance_proj_dim=16,
        decoder_dims=(32, 16), decoder_guidance_dims=(256, 128), decoder_guidance_proj_dims=(8, 4), num_layers=2,
        nheads=2, hidden_dim=16, pooling_size=(2, 2), feature_resolution=(6, 6), window_size=3,
    )
    names = Vocabulary(("cat", "dog, puppy", "grass"), parts=False)
    return CATSeg(clip_model=clip_model, aggregator=aggregator, train_vocabulary=names, test_vocabulary=names,
                  guidance_layers=(0, 1), clip_resolution=(96, 96), text_cache=TextFeatureCache(None))


def test_catseg_gradients_identical_text_tower_included(monkeypatch):
    model = _tiny_catseg()
    g = torch.Generator().manual_seed(3)
    batch = [{"image": torch.randint(0, 256, (3, 96, 96), generator=g, dtype=torch.uint8),
              "sem_seg": torch.randint(0, 3, (96, 96), generator=g)} for _ in range(2)]
    off = _loss_and_grads(model, batch, False)
    counter = _CountCheckpoints(monkeypatch)
    on = _loss_and_grads(model, batch, True)
    _assert_identical(off, on)
    # the fine-tuned text tower (q/v attention of both towers) is among the compared gradients
    assert "sem_seg_head.predictor.clip_model.transformer.resblocks.0.attn.q_proj_weight" in off[1]
    assert "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.0.attn.v_proj_weight" in off[1]
    clip_model = model.clip_model
    expected = (len(clip_model.transformer.resblocks)  # text blocks (one batch of prompts)
                + len(clip_model.visual.transformer.resblocks) - 1 + 2 * 2 + 2)
    assert counter.calls == expected
