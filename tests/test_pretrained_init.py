"""Training starts from pretrained encoders for whatever MODEL.WEIGHTS does not provide."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from partcatseg.checkpoint import Checkpointer
from partcatseg.modeling import build_model
from partcatseg.modeling.clip import build_clip, load_clip_weights, split_qkv_projections
from partcatseg.weights import WeightsNotFoundError


def _with(cfg, **kv):
    cfg = cfg.clone()
    cfg.defrost()
    for k, v in kv.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def test_dinov2_filled_when_checkpoint_lacks_it(tiny_partcatseg_cfg, tmp_path):
    cfg = _with(tiny_partcatseg_cfg, **{"MODEL.DINO_WEIGHTS": str(tmp_path / "dino.safetensors"),
                                        "MODEL.CLIP_WEIGHTS": ""})
    model = build_model(cfg)
    dino = {k: torch.randn_like(v) for k, v in model.backbone.dinov2.state_dict().items() if k != "mask_token"}
    save_file(dino, str(tmp_path / "dino.safetensors"))
    # a CAT-Seg-like checkpoint: everything but the DINOv2 backbone
    ckpt = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    torch.save({"model": ckpt}, tmp_path / "init.pth")
    report = Checkpointer(model).load_weights(str(tmp_path / "init.pth"))
    assert model.load_pretrained(report.missing) == [str(tmp_path / "dino.safetensors")]
    for k, v in dino.items():
        assert torch.equal(model.backbone.dinov2.state_dict()[k], v)


def test_nothing_overwritten_when_checkpoint_provides_it(tiny_partcatseg_cfg, tmp_path):
    cfg = _with(tiny_partcatseg_cfg, **{"MODEL.DINO_WEIGHTS": str(tmp_path / "absent.safetensors"),
                                        "MODEL.CLIP_WEIGHTS": "clip_vitb16_openai"})
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, tmp_path / "full.pth")
    report = Checkpointer(model).load_weights(str(tmp_path / "full.pth"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.load_pretrained(report.missing) == []  # would raise if it tried to read them
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_pretrained_file_says_how_to_get_it(tiny_partcatseg_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(tmp_path))
    cfg = _with(tiny_partcatseg_cfg, **{"MODEL.DINO_WEIGHTS": "dinov2_vits14", "MODEL.CLIP_WEIGHTS": ""})
    model = build_model(cfg)
    with pytest.raises(WeightsNotFoundError, match="download_weights.py"):
        model.load_pretrained(None)


def test_clip_weights_load_into_split_qkv_model(tmp_path):
    tiny = dict(embed_dim=16, width=32, layers=2, heads=2, patch_size=16, image_size=32,
                text_width=16, text_layers=1, text_heads=2)
    source = build_clip("tiny", tiny=tiny)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    target = build_clip("tiny", tiny=tiny)
    split_qkv_projections(target)
    load_clip_weights(target, str(tmp_path / "clip.safetensors"))
    fused = source.visual.transformer.resblocks[0].attn.in_proj_weight
    attn = target.visual.transformer.resblocks[0].attn
    assert torch.equal(torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight]), fused)
