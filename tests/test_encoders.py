"""CLIP dense forward, text features and their cache, DINOv2 position-embedding interpolation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from partcatseg.modeling import text as text_mod
from partcatseg.modeling.clip import (
    build_clip,
    encode_image_dense,
    resize_clip_pos_embed,
    split_qkv_projections,
    tokenize,
)
from partcatseg.modeling.dinov2 import DINOv2Backbone, interpolate_dinov2_pos_embed
from partcatseg.modeling.text import TextFeatureCache, encode_class_names, encode_tokens

TINY = dict(embed_dim=32, width=64, layers=3, heads=2, patch_size=16, image_size=64,
            text_width=32, text_layers=2, text_heads=2)


@pytest.fixture
def clip():
    torch.manual_seed(0)
    model = build_clip("tiny", tiny=TINY)
    with torch.no_grad():  # non-trivial LayerNorm affine params so mistakes show
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _reference_dense(model, images, cls_residual):
    """The dense forward written from the spec with plain tensor ops (sequence-first, as vendored)."""
    v = model.visual
    x = F.conv2d(images, v.conv1.weight, stride=v.conv1.stride)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.expand(b, 1, c), x], 1)
    pos = v.positional_embedding
    side = int(math.isqrt(pos.shape[0] - 1))
    grid = pos[1:].reshape(1, side, side, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(-1, c)
    x = x + torch.cat([pos[:1], grid])
    x = v.ln_pre(x)
    blocks = list(v.transformer.resblocks)
    for blk in blocks[:-1]:
        y = blk.ln_1(x)
        attn, _ = F.multi_head_attention_forward(
            y.transpose(0, 1), y.transpose(0, 1), y.transpose(0, 1), c, blk.attn.num_heads,
            blk.attn.in_proj_weight, blk.attn.in_proj_bias, None, None, False, 0.0,
            blk.attn.out_proj.weight, blk.attn.out_proj.bias, need_weights=False)
        x = x + attn.transpose(0, 1)
        x = x + blk.mlp(blk.ln_2(x))
    last = blocks[-1]
    qkv = last.ln_1(x) @ last.attn.in_proj_weight.T + last.attn.in_proj_bias
    val = qkv[..., 2 * c:] @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    val = val + (x[:, :1] if cls_residual else x)
    val = val + last.mlp(last.ln_2(val))
    return v.ln_post(val) @ v.proj


@pytest.mark.parametrize("cls_residual", [False, True])
def test_dense_forward_matches_spec_formula(clip, cls_residual):
    images = torch.randn(2, 3, 96, 80)  # 6x5 grid from a 4x4 pretrained grid: resized on the fly
    ours, captured = encode_image_dense(clip, images, cls_residual=cls_residual, capture_layers=(0, 1))
    ref = _reference_dense(clip, images, cls_residual)
    assert ours.shape == (2, 1 + 30, 32) and len(captured) == 2 and captured[0].shape == (2, 31, 64)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_split_qkv_keeps_outputs_and_official_key_layout(clip):
    images = torch.randn(1, 3, 64, 64)
    before, _ = encode_image_dense(clip, images, cls_residual=True)
    tokens = tokenize(["a photo of a cat's head"])
    text_before = encode_tokens(clip, tokens)
    split_qkv_projections(clip)
    keys = set(clip.state_dict())
    assert "visual.transformer.resblocks.0.attn.q_proj_weight" in keys
    assert "transformer.resblocks.1.attn.v_proj_weight" in keys
    assert not any(k.endswith("in_proj_weight") for k in keys)
    assert "visual.transformer.resblocks.0.attn.in_proj_bias" in keys
    after, _ = encode_image_dense(clip, images, cls_residual=True)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encode_tokens(clip, tokens), text_before, atol=1e-5, rtol=1e-5)


def test_pos_embed_resize_is_identity_on_native_grid_and_not_antialiased(clip):
    pos = clip.visual.positional_embedding.detach()
    assert torch.equal(resize_clip_pos_embed(pos, (4, 4)), pos)
    ours = resize_clip_pos_embed(pos, (7, 7))
    aa = F.interpolate(pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(7, 7), mode="bicubic",
                       align_corners=False, antialias=True).permute(0, 2, 3, 1).reshape(49, -1)
    assert not torch.allclose(ours[1:], aa)  # open_clip's antialiased resize is a different function


def test_truncated_text_encoder_equals_open_clip(clip):
    tokens = tokenize(["a bad photo of a cat's head.", "a tattoo of the aeroplane's wing.", "x"])
    torch.testing.assert_close(encode_tokens(clip, tokens), clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_class_name_features_shapes_and_synonyms(clip):
    templates = ["a photo of a {}.", "a {} in the scene"]
    feats = encode_class_names(clip, ["cat's head", "sofa, couch"], templates)
    assert feats.shape == (2, 2, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 2))
    sofa = text_mod.encode_prompts(clip, ["a photo of a sofa.", "a photo of a couch."])
    avg = F.normalize(sofa.mean(0), dim=-1)
    torch.testing.assert_close(feats[1, 0], avg, atol=1e-6, rtol=1e-5)
    first = encode_class_names(clip, ["sofa, couch"], templates, synonyms="first")
    torch.testing.assert_close(first[0, 0], sofa[0], atol=1e-6, rtol=1e-5)


def test_text_cache_memory_disk_and_invalidation(clip, tmp_path, monkeypatch):
    names, templates = ["cat's head", "dog's tail"], ["a photo of a {}."]
    cache = TextFeatureCache(str(tmp_path))
    feats = cache.get(clip, names, templates)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1

    calls = []
    real = text_mod.encode_class_names
    monkeypatch.setattr(text_mod, "encode_class_names", lambda *a, **k: calls.append(1) or real(*a, **k))
    fresh = TextFeatureCache(str(tmp_path))  # a "second start": reads the file, no text encoding
    torch.testing.assert_close(fresh.get(clip, names, templates), feats)
    assert calls == []
    fresh.get(clip, names + ["owl's beak"], templates)  # other names -> new entry
    assert calls == [1] and len(list(tmp_path.glob("*.pt"))) == 2
    with torch.no_grad():
        clip.token_embedding.weight.add_(0.01)  # other weights -> other key
    fresh.get(clip, names, templates)
    assert calls == [1, 1]
    # a corrupt cache file is recomputed, not trusted
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"garbage")
    again = TextFeatureCache(str(tmp_path)).get(clip, names, templates)
    assert calls == [1, 1, 1] and again.shape == (2, 1, 32)


def _official_interpolation(pos_embed, grid):
    """DINOv2 hub code's rule, written from the spec: scale_factor=(n+0.1)/M, bicubic, no antialias."""
    m = int(math.isqrt(pos_embed.shape[1] - 1))
    patch = pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    sx, sy = (grid[0] + 0.1) / m, (grid[1] + 0.1) / m
    patch = F.interpolate(patch, scale_factor=(sx, sy), mode="bicubic", antialias=False)
    return torch.cat([pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], 1)


def test_dinov2_interpolation_is_the_official_one():
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, 16)
    ours = interpolate_dinov2_pos_embed(pos, (32, 32))
    assert ours.shape == (1, 1 + 1024, 16)
    torch.testing.assert_close(ours, _official_interpolation(pos, (32, 32)), atol=0, rtol=0)
    timm_way = resample_abs_pos_embed(pos, new_size=(32, 32), num_prefix_tokens=1)
    assert (ours - timm_way).abs().max() > 1e-3  # why timm's own resampling is not used
    assert torch.equal(interpolate_dinov2_pos_embed(pos, (37, 37)), pos)  # native grid untouched


def test_dinov2_backbone_keys_and_multiscale_outputs():
    backbone = DINOv2Backbone(input_size=56, out_sizes=(16, 8, 4),
                              model_kwargs=dict(embed_dim=24, depth=1, num_heads=2))
    keys = set(backbone.state_dict())
    assert {"dinov2.mask_token", "dinov2.cls_token", "dinov2.pos_embed", "dinov2.blocks.0.ls1.gamma"} <= keys
    assert backbone.state_dict()["dinov2.pos_embed"].shape == (1, 1370, 24)
    out = backbone(torch.randn(2, 3, 70, 50))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 24, 16, 16), "res3": (2, 24, 8, 8), "res4": (2, 24, 4, 4)}
