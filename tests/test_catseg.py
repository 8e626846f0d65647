"""CAT-Seg meta-architectures (CVPR 2024 and part-catseg's baseline) and their aggregator.

Full-size models are only *built* (state-dict keys against the official lists); every forward pass
runs on reduced-width models from the same code so the file stays fast on a CPU.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from partcatseg.config import ConfigError, load_cfg
from partcatseg.modeling.catseg import (
    CATSeg,
    CATSegBaseline,
    catseg_loss,
    sliding_window_inference,
)
from partcatseg.modeling import build_model
from partcatseg.modeling.catseg_aggregator import TRUNCATED_LOGIT, CATSegAggregator
from partcatseg.modeling.clip import build_clip, encode_image_dense, split_qkv_projections
from partcatseg.modeling.dinov2 import DINOv2Backbone
from partcatseg.modeling.text import TextFeatureCache
from partcatseg.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"

TINY_CLIP = dict(
    embed_dim=32, width=64, layers=3, heads=2, patch_size=16, image_size=64,
    text_width=32, text_layers=2, text_heads=2,
)


def read_tsv(name: str) -> dict[str, str]:
    out = {}
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        assert dtype == "float32"
        out[key] = shape
    return out


def shapes(model: torch.nn.Module) -> dict[str, str]:
    return {k: str(tuple(v.shape)) for k, v in model.state_dict().items()}


def tiny_aggregator(**kw) -> CATSegAggregator:
    args = dict(
        text_guidance_dim=32, text_guidance_proj_dim=16, appearance_guidance_dim=32,
        appearance_guidance_proj_dim=16, decoder_dims=(32, 16), decoder_guidance_dims=(256, 128),
        decoder_guidance_proj_dims=(8, 4), num_layers=1, nheads=2, hidden_dim=16, pooling_size=(2, 2),
        feature_resolution=(6, 6), window_size=3,
    )
    args.update(kw)
    return CATSegAggregator(**args)


def tiny_catseg(names=("cat", "dog, puppy", "grass")) -> CATSeg:
    torch.manual_seed(0)
    clip_model = build_clip("", tiny=TINY_CLIP)
    split_qkv_projections(clip_model)
    return CATSeg(
        clip_model=clip_model, aggregator=tiny_aggregator(), train_vocabulary=Vocabulary(names, parts=False),
        test_vocabulary=Vocabulary(names, parts=False), guidance_layers=(0, 1), clip_resolution=(96, 96),
        text_cache=TextFeatureCache(None),
    )


def image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


# ------------------------------------------------------------------------------ full-size key lists
def test_cvpr_vitb_state_dict_and_trainable_params_match_official(tmp_path):
    cfg = load_cfg(str(ROOT / "configs/catseg/vitb_384.yaml"), ["MODEL.TEXT_CACHE_DIR", str(tmp_path)])
    model = build_model(cfg)
    assert isinstance(model, CATSeg) and model.task == "semantic"
    assert shapes(model) == read_tsv("catseg_cvpr_vitb_384.tsv")  # 484 keys, split q/k/v, upsample1/2
    assert model.guidance_layers == (3, 7) and model.clip_resolution == (384, 384)
    assert model.train_vocabulary.classes[:3] == ["person", "bicycle", "car"] and len(model.vocabulary) == 171
    trainable = {n: p.numel() for n, p in model.sem_seg_head.predictor.clip_model.named_parameters() if p.requires_grad}
    # only q/v of all 24 blocks (12 visual + 12 text): 48 tensors, 20,447,232 parameters
    assert len(trainable) == 48 and sum(trainable.values()) == 20_447_232
    assert all(n.endswith(("attn.q_proj_weight", "attn.v_proj_weight")) for n in trainable)
    assert all(p.requires_grad for n, p in model.named_parameters() if "clip_model" not in n)


def test_baseline_state_dict_matches_part_catseg_voc_config(tmp_path):
    cfg = load_cfg(str(ROOT / "configs/zero_shot/catseg_voc.yaml"), ["MODEL.TEXT_CACHE_DIR", str(tmp_path)])
    model = build_model(cfg)
    assert isinstance(model, CATSegBaseline) and model.task == "part"
    assert shapes(model) == read_tsv("partcatseg_repo_catseg_baseline_voc.tsv")  # 604 keys, fused in_proj
    assert len(model.templates) == 80 and model.aggregator.pad_len == 0
    assert len(model.train_vocabulary) == 74 and len(model.vocabulary) == 116
    assert model.vocabulary.objects[0] == "aeroplane"
    assert not any(p.requires_grad for p in model.sem_seg_head.predictor.clip_model.parameters())  # CLIP_FINETUNE ""


def test_r101_baseline_config_builds_detectron2_resnet(tmp_path):
    """catseg_ade / catseg_partimagenet: OV-PARTS' baseline with detectron2 ResNet-101 guidance."""
    cfg = load_cfg(str(ROOT / "configs/zero_shot/catseg_ade.yaml"), ["MODEL.TEXT_CACHE_DIR", str(tmp_path)])
    model = build_model(cfg)
    assert isinstance(model, CATSegBaseline)
    ours = shapes(model)
    ref = read_tsv("partcatseg_repo_catseg_baseline_voc.tsv")
    agg = "sem_seg_head.predictor.transformer."
    changed = {agg + "guidance_projection.0.weight": "(128, 1024, 3, 3)",
               agg + "decoder_guidance_projection.0.0.weight": "(32, 512, 3, 3)",
               agg + "decoder_guidance_projection.1.0.weight": "(16, 256, 3, 3)"}
    head = {k: v for k, v in ours.items() if not k.startswith("backbone.")}
    assert head == {**{k: v for k, v in ref.items() if not k.startswith("backbone.")}, **changed}
    backbone = {k: v for k, v in ours.items() if k.startswith("backbone.")}
    assert len(backbone) == 470  # detectron2 R101 up to res4, FrozenBN buffers included
    assert backbone["backbone.stem.conv1.weight"] == "(64, 3, 7, 7)"
    assert backbone["backbone.res4.22.conv3.norm.running_var"] == "(1024,)"
    assert backbone["backbone.res3.0.shortcut.weight"] == "(512, 256, 1, 1)"
    assert "backbone.res5.0.conv1.weight" not in backbone
    feats = model.backbone(torch.randn(1, 3, 384, 384))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "res2": (1, 256, 96, 96), "res3": (1, 512, 48, 48), "res4": (1, 1024, 24, 24)}
    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_DIM = 384
    with pytest.raises(ConfigError, match=r"APPEARANCE_GUIDANCE_DIM=384 \(expected 1024\)"):
        build_model(cfg)


# ------------------------------------------------------------------------------ CLIP q/k/v split parity
def hand_dense(clip_model, images, capture, cls_residual):
    """Dense forward written out from open_clip's (fused-weight) modules."""
    v = clip_model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
    pos = v.positional_embedding
    side = int(math.isqrt(pos.shape[0] - 1))
    grid = int(math.isqrt(x.shape[1] - 1))
    patch = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    x = x + torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)])
    x = v.ln_pre(x)
    caught = []
    for i, blk in enumerate(v.transformer.resblocks[:-1]):
        x = blk(x)
        if i in capture:
            caught.append(x)
    last = v.transformer.resblocks[-1]
    d = x.shape[-1]
    w, b = last.attn.in_proj_weight, last.attn.in_proj_bias
    val = F.linear(last.ln_1(x), w[2 * d :], b[2 * d :])
    val = last.attn.out_proj(val) + (x[:, :1] if cls_residual else x)
    val = val + last.mlp(last.ln_2(val))
    return v.ln_post(val) @ v.proj, caught


def test_split_qkv_model_reproduces_fused_dense_features():
    torch.manual_seed(0)
    fused = build_clip("", tiny=TINY_CLIP)
    split = build_clip("", tiny=TINY_CLIP)
    split.load_state_dict(fused.state_dict())
    split_qkv_projections(split)
    sd = split.state_dict()
    assert not any(k.endswith("in_proj_weight") for k in sd)
    for key, weight in fused.state_dict().items():  # split weights concatenate back to the fused ones
        if key.endswith("attn.in_proj_weight"):
            stem = key[: -len("in_proj_weight")]
            merged = torch.cat([sd[stem + "q_proj_weight"], sd[stem + "k_proj_weight"], sd[stem + "v_proj_weight"]])
            assert torch.equal(merged, weight)
    images = torch.randn(2, 3, 96, 96)  # 6x6 grid: the 4x4 position embedding is resized on the fly
    with torch.no_grad():
        for cls_residual in (True, False):
            want, want_caught = hand_dense(fused, images, (0, 1), cls_residual)
            got, got_caught = encode_image_dense(split, images, cls_residual=cls_residual, capture_layers=(0, 1))
            assert got.shape == (2, 37, 32)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            for g, w in zip(got_caught, want_caught, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        # the two residual rules really differ
        a, _ = encode_image_dense(split, images, cls_residual=True)
        b, _ = encode_image_dense(split, images, cls_residual=False)
        assert (a - b).abs().max() > 1e-3
        tokens = torch.randint(1, 49000, (2, 77))
        torch.testing.assert_close(split.encode_text(tokens), fused.encode_text(tokens), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ aggregator
def aggregator_inputs(b: int, t: int, p: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 32, 6, 6, generator=g)
    text = torch.randn(b, t, p, 32, generator=g)
    vis = [torch.randn(b, 32, 6, 6, generator=g), torch.randn(b, 256, 12, 12, generator=g),
           torch.randn(b, 128, 24, 24, generator=g)]
    return img, text, vis


def test_aggregator_truncates_to_top_pad_len_classes_and_fills_minus_100():
    torch.manual_seed(0)
    agg = tiny_aggregator().eval()
    img, text, vis = aggregator_inputs(2, 300)
    with torch.no_grad():
        out = agg(img, text, vis)
        assert out.shape == (2, 300, 24, 24)
        # rank classes by their maximum cosine cost, independently of the implementation
        cos = torch.einsum("bchw,btc->bthw", F.normalize(img, dim=1), F.normalize(text[:, :, 0], dim=-1))
        for i in range(2):
            top = set(cos[i].flatten(1).amax(1).topk(256).indices.tolist())
            filled = {c for c in range(300) if bool((out[i, c] == TRUNCATED_LOGIT).all())}
            assert filled == set(range(300)) - top and len(filled) == 44
            kept = sorted(top)
            alone = agg(img[i : i + 1], text[i : i + 1, kept], [v[i : i + 1] for v in vis])  # T == pad_len
            torch.testing.assert_close(out[i : i + 1, kept], alone, rtol=1e-4, atol=1e-4)
        # the two images keep different classes
        assert not torch.equal(out[0] == TRUNCATED_LOGIT, out[1] == TRUNCATED_LOGIT)


def test_padding_tokens_matter_below_pad_len_and_prompt_channels_are_checked():
    torch.manual_seed(0)
    agg = tiny_aggregator(pad_len=8).eval()
    img, text, vis = aggregator_inputs(1, 5)
    with torch.no_grad():
        before = agg(img, text, vis)
        # (a constant vector would not do: LayerNorm maps every constant token to the same point)
        agg.layers[0].attention.padding_tokens.copy_(torch.randn(1, 1, 16))
        assert (agg(img, text, vis) - before).abs().max() > 1e-4
    pre_cvpr = tiny_aggregator(pad_len=0, prompt_channel=2)
    assert not [k for k in pre_cvpr.state_dict() if "padding" in k]
    assert pre_cvpr.conv1.weight.shape == (16, 2, 7, 7)
    with pytest.raises(ValueError, match="prompt_channel=2"):
        pre_cvpr(img, text, vis)


# ------------------------------------------------------------------------------ losses
def bce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))


def test_catseg_loss_keeps_ignored_pixels_as_negatives():
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]], [[1.5, 0.2], [-0.3, 0.7]], [[0.1, 0.9], [-2.0, 1.1]]]])
    targets = torch.tensor([[[0, 255], [2, 1]]])
    y = torch.zeros(1, 3, 2, 2)
    y[0, 0, 0, 0] = y[0, 2, 1, 0] = y[0, 1, 1, 1] = 1  # the ignored pixel (0, 1) stays all-negative
    torch.testing.assert_close(catseg_loss(logits, targets, 255), bce(logits, y).mean())

    # background variant: bg (last channel) is positive wherever no label was written, weighted 0.05
    labels = torch.tensor([[[0, 255], [1, 1]]])
    y_bg = torch.zeros(1, 3, 2, 2)
    y_bg[0, 0, 0, 0] = y_bg[0, 1, 1, 0] = y_bg[0, 1, 1, 1] = y_bg[0, 2, 0, 1] = 1
    weight = torch.tensor([1.0, 1.0, 0.05]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        catseg_loss(logits, labels, 255, bg_on=True), (weight * bce(logits, y_bg)).mean()
    )
    with pytest.raises(ValueError, match=r"\[0, 3\).*found values 0\.\.7"):
        catseg_loss(logits, torch.tensor([[[0, 7], [1, 1]]]), 255)


# ------------------------------------------------------------------------------ CVPR meta-arch
def test_cvpr_training_step_trains_q_and_v_only():
    model = tiny_catseg().train()
    batch = [
        {"image": image(96, 96, 1), "sem_seg": torch.randint(0, 3, (96, 96))},
        {"image": image(96, 96, 2), "sem_seg": torch.full((96, 96), 255)},
    ]
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg"} and losses["loss_sem_seg"].ndim == 0
    assert torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    clip_model = model.clip_model
    for tower in (clip_model.visual.transformer, clip_model.transformer):  # text is fine-tuned too
        attn = tower.resblocks[0].attn
        assert attn.q_proj_weight.grad.abs().sum() > 0 and attn.v_proj_weight.grad.abs().sum() > 0
        assert attn.k_proj_weight.grad is None and attn.out_proj.weight.grad is None
    assert model.upsample1.weight.grad.abs().sum() > 0 and model.upsample2.weight.grad.abs().sum() > 0
    assert model.aggregator.conv1.weight.grad.abs().sum() > 0


def test_cvpr_inference_shapes_vocabulary_and_batching():
    model = tiny_catseg().eval()
    a = {"image": image(50, 70, 3), "height": 100, "width": 140}
    b = {"image": image(64, 64, 4)}
    out = model([a])[0]["sem_seg"]
    assert out.shape == (3, 100, 140) and 0 <= out.min() and out.max() <= 1
    # per-image padding: a batch of two equals two batches of one
    both = model([a, b])
    torch.testing.assert_close(both[0]["sem_seg"], out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1]["sem_seg"], model([b])[0]["sem_seg"], rtol=1e-5, atol=1e-5)
    assert both[1]["sem_seg"].shape == (3, 64, 64)
    # first synonym only; the vocabulary is an input (cache keyed by names, never stale)
    torch.testing.assert_close(model.text_features(["dog, puppy"]), model.text_features(["dog"]))
    model.set_vocabulary(Vocabulary(["sky", "tree"]))
    assert model([a])[0]["sem_seg"].shape == (2, 100, 140)


def test_sliding_window_order_fold_average_and_global_view():
    img = torch.arange(3 * 100 * 160, dtype=torch.float32).reshape(3, 100, 160) % 251
    big = F.interpolate(img[None], size=(640, 640), mode="bilinear", align_corners=False)[0]
    seen = {}

    def logits_fn(views):
        seen["views"] = views
        # view i predicts the constant logit i (one class) at 8x8
        return torch.arange(views.shape[0], dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)

    probs = sliding_window_inference(img, logits_fn)
    views = seen["views"]
    assert views.shape == (5, 3, 384, 384) and probs.shape == (1, 640, 640)
    for i, (r, c) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):  # row-major windows
        torch.testing.assert_close(views[i], big[:, r : r + 384, c : c + 384])
    torch.testing.assert_close(
        views[4], F.interpolate(img[None], size=(384, 384), mode="bilinear", align_corners=False)[0]
    )
    s = torch.sigmoid(torch.arange(5.0))
    assert probs[0, 10, 10].item() == pytest.approx(((s[0] + s[4]) / 2).item())  # one window
    assert probs[0, 100, 500].item() == pytest.approx(((s[1] + s[4]) / 2).item())
    assert probs[0, 300, 300].item() == pytest.approx((((s[0] + s[1] + s[2] + s[3]) / 4 + s[4]) / 2).item())


def test_cvpr_sliding_window_inference_on_uniform_image():
    model = tiny_catseg().eval()
    model.sliding_window = True
    record = {"image": torch.full((3, 80, 120), 128, dtype=torch.uint8), "height": 40, "width": 60}
    out = model([record])[0]["sem_seg"]
    assert out.shape == (3, 40, 60)
    assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


# ------------------------------------------------------------------------------ part-catseg baseline
PART_NAMES = ["cat's head", "cat's tail", "dog's head", "bottle's body"]


def tiny_baseline() -> CATSegBaseline:
    torch.manual_seed(0)
    backbone = DINOv2Backbone(
        input_size=56, out_sizes=(24, 12, 6),
        model_kwargs={"img_size": 56, "embed_dim": 32, "depth": 1, "num_heads": 2},
    )
    return CATSegBaseline(
        backbone=backbone, clip_model=build_clip("", tiny=TINY_CLIP),
        aggregator=tiny_aggregator(decoder_guidance_dims=(32, 32), prompt_channel=2, pad_len=0),
        train_vocabulary=Vocabulary(PART_NAMES[:3], parts=True),
        test_vocabulary=Vocabulary(PART_NAMES, ["cat", "dog", "bottle"], parts=True),
        templates=["a photo of a {}.", "art of the {}."], clip_resolution=(96, 96),
        text_cache=TextFeatureCache(None),
    )


def test_baseline_training_uses_background_and_frozen_clip():
    model = tiny_baseline().train()
    text = model.text_features(model.train_vocabulary.classes)
    bg = F.normalize(model.sem_seg_head.predictor.non_object_embedding.detach(), dim=-1)
    assert text.shape == (4, 2, 32) and not text.requires_grad
    torch.testing.assert_close(text[-1], bg.expand(2, -1))  # bg row = normalised checkpoint vector
    batch = [{"image": image(96, 96, 5), "obj_part_sem_seg": torch.randint(0, 3, (96, 96))}]
    batch[0]["obj_part_sem_seg"][:40] = 255
    loss = model(batch)["loss_sem_seg"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.clip_model.parameters())
    assert model.aggregator.conv1.weight.grad.abs().sum() > 0
    assert model.backbone.dinov2.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.sem_seg_head.predictor.non_object_embedding.grad is None


def test_baseline_oracle_obj_inference():
    model = tiny_baseline().eval()
    rec = {"image": image(60, 80, 6), "height": 30, "width": 40, "object_class": 0}
    out = model([rec])[0]
    assert out["sem_seg"].shape == (4, 30, 40) and out["sem_seg_all"].shape == (5, 30, 40)
    assert (out["sem_seg"][2:] == -1).all()  # not "cat" classes
    torch.testing.assert_close(out["sem_seg"][:2], out["sem_seg_all"][:2])
    rec_d2 = {"image": rec["image"], "instances": SimpleNamespace(gt_classes=torch.tensor([1]))}
    dog = model([rec_d2])[0]["sem_seg"]
    assert (dog[[0, 1, 3]] == -1).all() and (dog[2] >= 0).all()
    unmasked = model([{"image": rec["image"]}])[0]["sem_seg"]
    assert (unmasked >= 0).all()
