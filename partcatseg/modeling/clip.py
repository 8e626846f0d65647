"""CLIP from open_clip, plus the dense image forward that CAT-Seg and PartCATSeg need.

The official projects vendor OpenAI's CLIP code. open_clip builds the same architecture with the
same state-dict names, so we use it as-is and only add what open_clip does not offer:

* a *dense* image forward whose last block skips token mixing (value path only), applied to a
  position embedding resized on the fly with bicubic interpolation (no antialias) exactly as the
  official code does, so the checkpoint keeps its (197, 768) position embedding;
* capture of intermediate residual-stream tokens (CAT-Seg CVPR uses blocks 3 and 7 as guidance);
* the CAT-Seg CVPR layout with split ``q/k/v_proj_weight`` attention weights.  ``nn.MultiheadAttention``
  supports that layout natively, so converting a model is a matter of swapping parameters.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fused import packed_attention
from .grad_checkpoint import checkpointed

__all__ = [
    "CLIP_ARCHS",
    "build_clip",
    "clip_arch_for",
    "split_qkv_projections",
    "in_proj_weight",
    "resize_clip_pos_embed",
    "encode_image_dense",
    "tokenize",
    "load_clip_weights",
    "OPENAI_CLIP_WEIGHTS",
]

# Weights names (partcatseg.weights) of the OpenAI CLIP each official CLIP_PRETRAINED starts from.
OPENAI_CLIP_WEIGHTS = {"ViT-B/16": "clip_vitb16_openai", "ViT-L/14@336px": "clip_vitl14_336_openai"}

# Official CLIP_PRETRAINED names -> open_clip model names.  QuickGELU matters: OpenAI weights were
# trained with it, and open_clip's plain "ViT-B-16" silently builds nn.GELU.
CLIP_ARCHS = {
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}


def clip_arch_for(clip_pretrained: str, override: str = "") -> str:
    """Map a config's ``CLIP_PRETRAINED`` to an open_clip architecture name."""
    if override:
        return override
    if clip_pretrained not in CLIP_ARCHS:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED={clip_pretrained!r} is not supported; expected one of "
            f"{sorted(CLIP_ARCHS)} (or set MODEL.CLIP_ARCH to an open_clip model name)."
        )
    return CLIP_ARCHS[clip_pretrained]


def build_clip(arch: str, *, tiny: Optional[dict] = None) -> nn.Module:
    """Build an open_clip CLIP with random weights and no network access.

    ``tiny`` builds a reduced-width model from the same code (for the toy configs and tests):
    a dict with keys ``embed_dim, width, layers, heads, patch_size, image_size, text_width,
    text_layers, text_heads``.
    """
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    if tiny is not None:
        vision = CLIPVisionCfg(
            layers=tiny["layers"], width=tiny["width"], head_width=tiny["width"] // tiny["heads"],
            patch_size=tiny["patch_size"], image_size=tiny["image_size"],
        )
        text = CLIPTextCfg(
            context_length=77, vocab_size=49408, width=tiny["text_width"],
            heads=tiny["text_heads"], layers=tiny["text_layers"],
        )
        model = CLIP(embed_dim=tiny["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True)
    else:
        model = open_clip.create_model(arch, pretrained=None, require_pretrained=False)
    model.eval()
    return model


def in_proj_weight(attn: nn.MultiheadAttention) -> torch.Tensor:
    """The fused (3D, D) input projection of an attention module, whatever its layout."""
    if attn.in_proj_weight is not None:
        return attn.in_proj_weight
    return torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight], dim=0)


def split_qkv_projections(model: nn.Module) -> None:
    """Convert every ``nn.MultiheadAttention`` to separate q/k/v projection weights (CAT-Seg CVPR).

    The CVPR checkpoints store ``attn.q_proj_weight``/``k_proj_weight``/``v_proj_weight`` and a fused
    ``in_proj_bias``; fine-tuning trains q and v only, which needs them to be separate tensors.
    """
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            q, k, v = module.in_proj_weight.detach().chunk(3, dim=0)
            del module.in_proj_weight
            module.register_parameter("in_proj_weight", None)
            module.q_proj_weight = nn.Parameter(q.clone())
            module.k_proj_weight = nn.Parameter(k.clone())
            module.v_proj_weight = nn.Parameter(v.clone())
            module._qkv_same_embed_dim = False


def resize_clip_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a (1+N, D) CLIP position embedding to ``grid`` as the official code does.

    Bicubic, ``align_corners=False``, no antialias; the class position is kept.  open_clip's own
    resize uses antialias, which differs by up to 7e-3, hence this function.
    """
    n = pos_embed.shape[0] - 1
    side = int(math.isqrt(n))
    if (side, side) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls_pos, patch_pos], dim=0)


def encode_image_dense(
    clip_model: nn.Module,
    images: torch.Tensor,
    *,
    cls_residual: bool = False,
    capture_layers: Sequence[int] = (),
    grad_checkpointing: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Dense CLIP image features ``(B, 1 + h*w, embed_dim)`` for normalised ``images``.

    Blocks 0..L-2 run normally; the last block replaces attention by its value path
    (``out_proj(v)``), so every patch token keeps its own content.  Its residual is the block input
    token-wise (pre-CVPR CAT-Seg, PartCATSeg) or the CLS token broadcast (``cls_residual=True``,
    CAT-Seg CVPR).  ``ln_post`` and ``proj`` are applied to all tokens.

    Returns the dense features and the residual-stream outputs ``(B, 1 + h*w, width)`` of the
    blocks listed in ``capture_layers``.  ``grad_checkpointing`` checkpoints blocks 0..L-2 one by one
    when gradients are recorded (training memory; see :mod:`.grad_checkpoint`).
    """
    visual = clip_model.visual
    x = visual.conv1(images)  # B, width, h, w
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + resize_clip_pos_embed(visual.positional_embedding, grid).to(x.dtype)
    x = visual.ln_pre(x)

    blocks = visual.transformer.resblocks
    captured: list[torch.Tensor] = []
    wanted = set(capture_layers)
    for i, block in enumerate(blocks[:-1]):
        # inference: the SDPA rewrite of the block; training: the block itself, checkpointed when asked for
        x = _block_inference(block, x) if _sdpa_block(block, x) else checkpointed(block, x, enabled=grad_checkpointing)
        if i in wanted:
            captured.append(x)

    last = blocks[-1]
    attn = last.attn
    width = x.shape[-1]  # only the value third of the input projection is used
    v = F.linear(last.ln_1(x), in_proj_weight(attn)[2 * width :], attn.in_proj_bias[2 * width :])
    v = F.linear(v, attn.out_proj.weight, attn.out_proj.bias)
    x = v + (x[:, :1] if cls_residual else x)
    x = x + last.mlp(last.ln_2(x))
    x = visual.ln_post(x) @ visual.proj
    return x, captured


def _sdpa_block(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`_block_inference` may replace ``block(x)``: inference (no autograd) on a
    plain open_clip residual block with batch-first self-attention."""
    attn = getattr(block, "attn", None)
    return (
        not torch.is_grad_enabled()
        and not block.training
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.in_proj_bias is not None
        and not hasattr(block, "ln_1_kv")
        and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
        and x.dim() == 3
    )


def _block_inference(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for an unmasked open_clip residual block, attention through
    ``scaled_dot_product_attention``.

    At inference ``nn.MultiheadAttention`` takes its native fast path, which on a CPU computes the
    attention with two batched matmuls and a separate softmax; the fused SDPA kernel is ~1.7x
    faster there (577 tokens, 12 heads).  Same math, float re-association only (~1e-7).
    """
    attn = block.attn
    y = packed_attention(F.linear(block.ln_1(x), in_proj_weight(attn), attn.in_proj_bias), attn.num_heads)
    x = x + block.ls_1(F.linear(y, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


_TOKENIZER = None


def tokenize(texts: Sequence[str]) -> torch.Tensor:
    """OpenAI BPE tokens (N, 77), identical to the official ``clip.tokenize``."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer

        _TOKENIZER = SimpleTokenizer()
    return _TOKENIZER(list(texts))


def load_clip_weights(clip_model: nn.Module, path: str) -> None:
    """Load pretrained CLIP weights (open_clip safetensors/.bin, or OpenAI's TorchScript ``.pt``).

    The file's attention layout is converted to the model's (split q/k/v for CAT-Seg CVPR); every
    model key must be present.
    """
    from ..checkpoint import convert_qkv_layout

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - OpenAI's files are TorchScript archives
            state = torch.jit.load(path, map_location="cpu").state_dict()
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    state = convert_qkv_layout(state, set(clip_model.state_dict()))
    clip_model.load_state_dict(state, strict=True)
