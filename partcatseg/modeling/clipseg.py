"""CLIPSeg from Hugging Face ``transformers`` and the PartCLIPSeg network built on top of it.

PartCLIPSeg (Choi et al., NeurIPS 2024) is CLIPSeg ``rd64-refined`` with a few additions. The
network below keeps the module tree of the official ``PartCLIPSegForImageSegmentation`` (the
``partclipseg_model.*`` entries of a released checkpoint), so those checkpoints load unchanged:

================================  =================================================================
``clip``                          ``transformers.CLIPSegModel``: text and vision towers, projections,
                                  ``logit_scale``
``decoder``                       :class:`PartCLIPSegDecoder`: ``transformers``' ``CLIPSegDecoder``
                                  (FiLM, ``reduces``, the post-norm layers, ``transposed_convolution``)
                                  plus the object-specific branch
``non_object_embedding``          the background condition, appended after the class conditions
``visual_adapter``                bottleneck adapter blended into the extracted vision layers
``text_adapter``, ``tunable_linear``  stored in checkpoints; the official forward multiplies the text
                                  adapter by zero and never calls ``tunable_linear``
================================  =================================================================

Everything is built from explicit sizes with random weights; nothing is downloaded. The helpers
:func:`clipseg_pixel_values` and :func:`clipseg_tokenize` replace the hub processor of
``CIDAS/clipseg-rd64-refined`` (PIL bilinear resize, ImageNet normalisation, the OpenAI BPE padded
with the end-of-text id).

Supported ``transformers`` versions: 4.46 and later (tested with 4.46, 4.57 and 5.x). The two API
generations differ in how a layer is called and how attention probabilities come back;
:func:`run_clipseg_layer` hides that difference.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .fused import linear, packed_attention

__all__ = [
    "CLIPSEG_RD64_REFINED",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "clipseg_config",
    "clipseg_pixel_values",
    "clipseg_tokenize",
    "run_clipseg_layer",
    "Adapter",
    "PartCLIPSegDecoder",
    "PartCLIPSegDecoderOutput",
    "PartCLIPSegNet",
]

#: The architecture of ``CIDAS/clipseg-rd64-refined`` (the official PartCLIPSeg starting point):
#: ViT-B/16 vision tower, CLIP text tower, decoder of width 64 with the "complex" upsampler.
CLIPSEG_RD64_REFINED = dict(
    text_width=512,
    text_layers=12,
    text_heads=8,
    text_intermediate=2048,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    vision_intermediate=3072,
    image_size=224,
    patch_size=16,
    projection_dim=512,
    extract_layers=(3, 6, 9),
    reduce_dim=64,
    decoder_heads=4,
    decoder_intermediate=2048,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def clipseg_config(
    *,
    text_width: int = 512,
    text_layers: int = 12,
    text_heads: int = 8,
    text_intermediate: int = 2048,
    vision_width: int = 768,
    vision_layers: int = 12,
    vision_heads: int = 12,
    vision_intermediate: int = 3072,
    image_size: int = 224,
    patch_size: int = 16,
    projection_dim: int = 512,
    extract_layers: Sequence[int] = (3, 6, 9),
    reduce_dim: int = 64,
    decoder_heads: int = 4,
    decoder_intermediate: int = 2048,
    conditional_layer: int = 0,
    complex_transposed_convolution: bool = True,
    attn_implementation: str = "eager",
):
    """A ``transformers.CLIPSegConfig``; the defaults are the ``clipseg-rd64-refined`` recipe.

    ``image_size`` is the size the position embeddings were trained for (224: a 14x14 grid for
    patch 16); inputs of another size use bicubically resized position embeddings.
    ``attn_implementation`` applies to the text and vision towers (the decoder always runs "eager",
    whose attention probabilities the attention-control losses read).
    """
    from transformers import CLIPSegConfig

    extract_layers = [int(i) for i in extract_layers]
    if not extract_layers or max(extract_layers) >= vision_layers or min(extract_layers) < 0:
        raise ValueError(f"extract_layers {extract_layers} must index the {vision_layers} vision layers")
    if complex_transposed_convolution and patch_size % 4:
        raise ValueError(f"the refined (complex) upsampler needs patch_size divisible by 4, got {patch_size}")
    text = dict(
        hidden_size=text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        intermediate_size=text_intermediate,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
    )
    vision = dict(
        hidden_size=vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        intermediate_size=vision_intermediate,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
    )
    config = CLIPSegConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=projection_dim,
        extract_layers=extract_layers,
        reduce_dim=reduce_dim,
        decoder_num_attention_heads=decoder_heads,
        decoder_intermediate_size=decoder_intermediate,
        conditional_layer=conditional_layer,
        use_complex_transposed_convolution=complex_transposed_convolution,
    )
    for sub in (config, config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    return config


# --------------------------------------------------------------------------- processor
ImageLike = Union[torch.Tensor, np.ndarray, Image.Image]


def _to_pil(image: ImageLike) -> Image.Image:
    """A uint8 RGB(-ordered) PIL image from a (3,H,W) tensor, an (H,W,3) array or a PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            image = image.detach().round().clamp(0, 255).to(torch.uint8)
        array = image.detach().cpu().permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image array, got shape {array.shape}")
        if array.dtype != np.uint8:
            array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def clipseg_pixel_values(
    images: Sequence[ImageLike],
    size: int = 352,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """The CLIPSeg image processor: (B, 3, size, size) float32 pixel values.

    Per image, as ``ViTImageProcessor`` with the ``clipseg-rd64-refined`` settings: PIL bilinear
    resize of the uint8 image to ``size x size`` (the aspect ratio is not kept), ``x * (1/255)``
    in float64 rounded to float32, then ``(x - mean) / std`` in float32. The channels are used in
    the order given (the processor calls them R, G, B).
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    out = []
    for image in images:
        resized = _to_pil(image).resize((size, size), resample=Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)
        x = (x.to(torch.float64) * (1.0 / 255.0)).to(torch.float32)
        out.append((x - mean_t) / std_t)
    pixel_values = torch.stack(out)
    return pixel_values.to(device) if device is not None else pixel_values


_TOKENIZER = None


def clipseg_tokenize(names: Sequence[str], context_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (N, context_length) as the CLIPSeg tokenizer makes them.

    OpenAI BPE (open_clip's ``SimpleTokenizer``: the same ids as ``CLIPTokenizerFast`` for class
    names), start/end-of-text tokens, padded to ``context_length`` with the end-of-text id
    (``padding="max_length"``); the mask is 1 on the real tokens.
    """
    global _TOKENIZER
    if _TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer

        _TOKENIZER = SimpleTokenizer()
    tok = _TOKENIZER
    names = list(names)
    ids = torch.full((len(names), context_length), tok.eot_token_id, dtype=torch.long)
    mask = torch.zeros((len(names), context_length), dtype=torch.long)
    for i, name in enumerate(names):
        tokens = [tok.sot_token_id] + tok.encode(name) + [tok.eot_token_id]
        if len(tokens) > context_length:
            raise ValueError(f"class name {name!r} is {len(tokens)} tokens long; the text tower takes {context_length}")
        ids[i, : len(tokens)] = torch.tensor(tokens)
        mask[i, : len(tokens)] = 1
    return ids, mask


# --------------------------------------------------------------------------- transformers compatibility
_LEGACY_LAYER_API: dict[type, bool] = {}


def _legacy_layer(layer: nn.Module) -> bool:
    """transformers 4.x layers take ``causal_attention_mask``/``output_attentions`` and return a tuple."""
    cls = type(layer)
    if cls not in _LEGACY_LAYER_API:
        _LEGACY_LAYER_API[cls] = "causal_attention_mask" in inspect.signature(cls.forward).parameters
    return _LEGACY_LAYER_API[cls]


def run_clipseg_layer(
    layer: nn.Module, hidden: torch.Tensor, want_attention: bool = False
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run one ``transformers`` CLIPSeg encoder/decoder layer without a mask.

    Returns the new hidden states and, if ``want_attention``, the layer's attention probabilities
    (batch, heads, tokens, tokens). transformers 4.x returns them when asked; 5.x returns them as
    the second output of ``layer.self_attn`` (with the "eager" implementation), read by a hook.
    Without attention probabilities (and without attention dropout) it takes :func:`_layer_sdpa`.
    """
    if not want_attention and _sdpa_applies(layer, hidden):
        return _layer_sdpa(layer, hidden), None
    if _legacy_layer(layer):
        out = layer(hidden, None, None, output_attentions=want_attention)
        return out[0], (out[1] if want_attention else None)
    if not want_attention:
        return layer(hidden, attention_mask=None), None
    captured: list[torch.Tensor] = []
    handle = layer.self_attn.register_forward_hook(lambda _m, _inp, out: captured.append(out[1]))
    try:
        hidden = layer(hidden, attention_mask=None)
    finally:
        handle.remove()
    if not captured or captured[0] is None:
        raise RuntimeError("the decoder attention returned no probabilities; it must run the 'eager' implementation")
    return hidden, captured[0]


def _decoder_layer_class() -> type:
    from transformers.models.clipseg.modeling_clipseg import CLIPSegDecoderLayer

    return CLIPSegDecoderLayer


def _sdpa_applies(layer: nn.Module, hidden: torch.Tensor) -> bool:
    """Whether :func:`_layer_sdpa` may replace ``layer(hidden)``: no attention dropout in effect (eval
    mode, or a dropout of 0 as in every CLIPSeg config), a plain CLIPSeg layer (q/k/v/out projections,
    two LayerNorms, a two-layer MLP) on (batch, tokens, width)."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (
        (not layer.training or float(getattr(attn, "dropout", 1.0) or 0.0) == 0.0)
        and hidden.dim() == 3
        and all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads", "scale"))
        and all(hasattr(mlp, name) for name in ("fc1", "fc2", "activation_fn"))
        and all(hasattr(layer, name) for name in ("layer_norm1", "layer_norm2"))
    )


def _layer_sdpa(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``layer(hidden)`` with attention through ``scaled_dot_product_attention`` and the q/k/v
    projections as one matmul; at CPU inference ReLU and residual adds are fused into the matmuls
    (:func:`.fused.linear`), with autograd it is plain ``F.linear``.

    The layers are set to the "eager" attention because the attention-control losses read the
    probabilities of one decoder layer; eager materialises (batch, heads, N, N) scores, which for the
    decoder (59 conditions x 4 heads x 485^2 tokens at 352 px) is 0.2 GB per layer: two thirds of
    PartCLIPSeg's inference time on a CPU, and 11% of a training step. Every other layer takes this
    path. Same math; float re-association only (~1e-6). Decoder layers are post-norm, encoder layers
    pre-norm.
    """
    attn, mlp = layer.self_attn, layer.mlp
    post_norm = isinstance(layer, _decoder_layer_class())
    x = hidden if post_norm else layer.layer_norm1(hidden)
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    y = packed_attention(linear(x, weight, bias), attn.num_heads, scale=attn.scale)
    h = linear(y, attn.out_proj.weight, attn.out_proj.bias, residual=hidden)
    if post_norm:
        h = layer.layer_norm1(h)
    z = h if post_norm else layer.layer_norm2(h)
    fc1, fc2 = mlp.fc1, mlp.fc2
    if isinstance(mlp.activation_fn, nn.ReLU):
        z = linear(z, fc1.weight, fc1.bias, activation="relu")
    else:
        z = mlp.activation_fn(linear(z, fc1.weight, fc1.bias))
    out = linear(z, fc2.weight, fc2.bias, residual=h)
    return layer.layer_norm2(out) if post_norm else out


def _block_upsampler(module: nn.Module) -> bool:
    """A transposed convolution whose kernel equals its stride: every input pixel fills its own
    output block, so it is one matmul followed by a re-arrangement."""
    return (
        isinstance(module, nn.ConvTranspose2d)
        and tuple(module.kernel_size) == tuple(module.stride)
        and tuple(module.padding) == (0, 0)
        and tuple(module.output_padding) == (0, 0)
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
    )


def _block_weight(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(in, out, ka, kb) weight -> (ka * kb * out, in) rows ordered (a, b, out); bias repeated alike."""
    ka, kb = conv.kernel_size
    weight = conv.weight.permute(2, 3, 1, 0).reshape(ka * kb * conv.out_channels, conv.in_channels)
    return weight, None if conv.bias is None else conv.bias.repeat(ka * kb)


def _upsample_inference(head: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """CLIPSeg's upsampler at inference with its tail -- ``ConvTranspose2d`` (kernel = stride), or
    two of them with a ReLU between -- as matmuls; None when ``head`` has another form.

    On a CPU the last transposed convolution (32 channels -> 1) runs a slow generic kernel: 0.12 s
    of PartCLIPSeg's 1.4 s per image. As matmuls, and with the two levels of output blocks kept
    apart until one final re-arrangement, the tail takes a fraction of that; every output value is
    the same sum of products (float re-association only, ~1e-7).
    """
    modules = list(head) if isinstance(head, nn.Sequential) else [head]
    if len(modules) >= 3 and _block_upsampler(modules[-3]) and isinstance(modules[-2], nn.ReLU) \
            and _block_upsampler(modules[-1]):
        first, second, body = modules[-3], modules[-1], modules[:-3]
    elif _block_upsampler(modules[-1]):
        first, second, body = modules[-1], None, modules[:-1]
    else:
        return None
    for module in body:
        x = module(x)
    n, c, h, w = x.shape
    ka, kb = first.kernel_size
    weight, bias = _block_weight(first)
    y = linear(x.permute(0, 2, 3, 1).reshape(n * h * w, c), weight, bias,
               activation="none" if second is None else "relu")  # (n h w, ka kb c1)
    if second is None:
        c1 = first.out_channels
        return y.view(n, h, w, ka, kb, c1).permute(0, 5, 1, 3, 2, 4).reshape(n, c1, h * ka, w * kb)
    kc, kd = second.kernel_size
    weight, bias = _block_weight(second)
    y = linear(y.view(-1, first.out_channels), weight, bias)  # (n h w ka kb, kc kd c2)
    c2 = second.out_channels
    y = y.view(n, h, w, ka, kb, kc, kd, c2).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return y.reshape(n, c2, h * ka * kc, w * kb * kd)


def _vision_embeddings(embeddings: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch + class embeddings with the position table bicubically resized to the input's grid.

    transformers >= 4.46 resizes when asked (``interpolate_pos_encoding``); older versions did it
    whenever the token count differed. Either way the table is resized on every call.
    """
    if "interpolate_pos_encoding" in inspect.signature(type(embeddings).forward).parameters:
        return embeddings(pixel_values, interpolate_pos_encoding=True)
    return embeddings(pixel_values)


def _make_position_ids_persistent(module: nn.Module) -> None:
    """Official checkpoints store the (int64) ``position_ids`` buffers; transformers >= 4.31 does not."""
    for sub in module.modules():
        if "position_ids" in getattr(sub, "_buffers", {}):
            sub.register_buffer("position_ids", sub._buffers["position_ids"], persistent=True)


# --------------------------------------------------------------------------- modules
class Adapter(nn.Module):
    """Bottleneck adapter ``ReLU(W2 ReLU(W1 x))`` without biases (keys ``fc.0.weight``, ``fc.2.weight``)."""

    def __init__(self, width: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(width, width // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(width // reduction, width, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@dataclass
class PartCLIPSegDecoderOutput:
    """Decoder outputs for B images and C = P + O + 1 conditions (T object-specific classes).

    ``logits``: (B, C, S, S) generalized parts, objects, background. ``part_obj_logits``:
    (B, T + 1, S, S) object-specific parts, background. ``attentions``: {layer: (B, C, heads, N, N)}
    for the requested decoder layers (N = 1 + grid tokens). ``tokens``: (B, C, grid, width)
    decoder features without the class token; ``part_obj_features``: (B, T + 1, grid, width) the
    FiLM-ed object-specific features that enter ``part_obj_with_cond_embed``.
    """

    logits: torch.Tensor
    part_obj_logits: torch.Tensor
    attentions: dict = field(default_factory=dict)
    tokens: Optional[torch.Tensor] = None
    part_obj_features: Optional[torch.Tensor] = None


def _decoder_base():
    from transformers.models.clipseg.modeling_clipseg import CLIPSegDecoder

    return CLIPSegDecoder


class PartCLIPSegDecoder(_decoder_base()):
    """``transformers``' CLIPSeg decoder plus PartCLIPSeg's object-specific branch.

    Inherited (CLIPSeg): ``film_mul``/``film_add`` (conditioning FiLM), ``reduces`` (vision width ->
    ``reduce_dim``), ``layers`` (post-norm transformer layers), ``transposed_convolution`` (the
    upsampler producing one logit map per condition).

    Added (PartCLIPSeg): for every object-specific class t ("cat's head") the decoder features of
    its generalized part and of its object are concatenated and mixed by ``part_obj_mlp``; the text
    side concatenates two condition embeddings, reduces them (``reduce_cond_embed``) and modulates
    the features with a second FiLM (``cond_film_mul``/``cond_film_add``); the upsampler
    ``part_obj_with_cond_embed`` has the shape of ``transposed_convolution``. At construction the
    second FiLM and upsampler are copies of the first (as the official ``__init__`` does after
    loading CLIPSeg weights).
    """

    _OFFICIAL_ORDER = (
        "film_mul", "film_add", "cond_film_mul", "cond_film_add", "transposed_convolution",
        "part_obj_with_cond_embed", "part_obj_mlp", "reduce_cond_embed", "reduces", "layers",
    )

    def __init__(self, config) -> None:
        super().__init__(config)
        proj, width = config.projection_dim, config.reduce_dim
        self.cond_film_mul = copy.deepcopy(self.film_mul)
        self.cond_film_add = copy.deepcopy(self.film_add)
        self.part_obj_with_cond_embed = copy.deepcopy(self.transposed_convolution)
        self.part_obj_mlp = nn.Sequential(nn.Linear(2 * width, width))
        self.reduce_cond_embed = nn.Linear(2 * proj, proj)
        for name in self._OFFICIAL_ORDER:  # state_dict order of the official checkpoints
            self._modules[name] = self._modules.pop(name)
        for layer in self.layers:  # attention probabilities are read by the attention-control losses
            layer.self_attn.config._attn_implementation = "eager"

    def copy_branch_weights(self) -> None:
        """Official construction step: second FiLM and upsampler start as copies of the first."""
        with torch.no_grad():
            self.part_obj_with_cond_embed.load_state_dict(self.transposed_convolution.state_dict())
            self.cond_film_mul.load_state_dict(self.film_mul.state_dict())
            self.cond_film_add.load_state_dict(self.film_add.state_dict())

    def forward(  # type: ignore[override]
        self,
        activations: Sequence[torch.Tensor],
        conditions: torch.Tensor,
        part_index: torch.Tensor,
        obj_index: torch.Tensor,
        num_parts: int,
        attention_layers: Sequence[int] = (),
        object_text_offset: int = 0,
    ) -> PartCLIPSegDecoderOutput:
        """Decode B images under C conditions.

        Args:
            activations: the extracted vision hidden states (B, N, vision width), shallow to deep.
            conditions: (C, projection_dim) embeddings: P generalized parts, O objects, background.
            part_index / obj_index: (T,) generalized-part index (< P) and object index (< O) of every
                object-specific class.
            num_parts: P.
            attention_layers: decoder layers whose attention probabilities are returned.
            object_text_offset: where the object rows start when the text side looks up "the object's
                embedding". The official code uses 0, i.e. it reads condition ``obj_index[t]`` — a
                generalized part's embedding — while the feature side correctly uses ``P + obj_index``.
                Released weights are trained with 0; ``num_parts`` gives the evidently intended lookup.
        """
        b, n, _ = activations[0].shape
        c = conditions.shape[0]
        x: Optional[torch.Tensor] = None
        attentions = {}
        for i, (activation, layer, reduce) in enumerate(zip(list(activations)[::-1], self.layers, self.reduces)):
            reduced = reduce(activation).unsqueeze(1)  # (B, 1, N, R): the same for every condition
            x = reduced.expand(b, c, n, reduced.shape[-1]) if x is None else reduced + x
            if i == self.conditional_layer:
                x = self.film_mul(conditions)[None, :, None] * x + self.film_add(conditions)[None, :, None]
            hidden, attn = run_clipseg_layer(layer, x.reshape(b * c, n, -1), want_attention=i in attention_layers)
            x = hidden.view(b, c, n, -1)
            if attn is not None:
                attentions[i] = attn.view(b, c, *attn.shape[1:])

        tokens = x[:, :, 1:]  # (B, C, L, R) without the class token
        logits = self._upsample(self.transposed_convolution, tokens)
        part_obj_logits, features = self.object_specific(
            tokens, conditions, part_index, obj_index, num_parts, object_text_offset
        )
        return PartCLIPSegDecoderOutput(logits, part_obj_logits, attentions, tokens, features)

    @staticmethod
    def _upsample(head: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        """(B, K, L, R) token features -> (B, K, S, S) logit maps through an upsampler."""
        b, k, length, width = feats.shape
        side = int(round(length**0.5))
        if side * side != length:
            raise ValueError(f"the decoder needs a square token grid, got {length} tokens")
        x = feats.reshape(b * k, length, width).transpose(1, 2).reshape(b * k, width, side, side)
        maps = None
        if not torch.is_grad_enabled() and not head.training:
            maps = _upsample_inference(head, x)
        if maps is None:
            maps = head(x)
        return maps.view(b, k, maps.shape[-2], maps.shape[-1])

    def object_specific(
        self,
        tokens: torch.Tensor,
        conditions: torch.Tensor,
        part_index: torch.Tensor,
        obj_index: torch.Tensor,
        num_parts: int,
        object_text_offset: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The object-specific head on decoder tokens (B, C, L, R): logits (B, T+1, S, S), features.

        Features: ``[F(part(t)) ; F(P + obj(t))]`` mixed by ``part_obj_mlp`` (background: ``[F_bg ;
        F_bg]``). Text: ``[E(obj(t) + object_text_offset) ; E(part(t))]`` reduced by
        ``reduce_cond_embed`` — note the reversed order, as officially — then FiLM on the features.
        """
        part_feats = tokens[:, part_index]
        obj_feats = tokens[:, num_parts + obj_index]
        bg = tokens[:, -1:]
        pairs = torch.cat([torch.cat([part_feats, obj_feats], dim=-1), torch.cat([bg, bg], dim=-1)], dim=1)
        mixed = self.part_obj_mlp(pairs)  # (B, T+1, L, R)

        text_pairs = torch.cat([conditions[obj_index + object_text_offset], conditions[part_index]], dim=-1)
        bg_text = torch.cat([conditions[-1:], conditions[-1:]], dim=-1)
        reduced_text = self.reduce_cond_embed(torch.cat([text_pairs, bg_text], dim=0))  # (T+1, D)
        scale, shift = self.cond_film_mul(reduced_text)[None, :, None], self.cond_film_add(reduced_text)[None, :, None]
        features = scale * mixed + shift
        return self._upsample(self.part_obj_with_cond_embed, features), features


class PartCLIPSegNet(nn.Module):
    """The official ``PartCLIPSegForImageSegmentation`` tree (``partclipseg_model.*`` keys).

    Args:
        config: a ``transformers.CLIPSegConfig`` (see :func:`clipseg_config`).
        adapter_reduction: bottleneck factor of both adapters (4).
        adapter_ratio: weight of the visual adapter's output in ``ratio * adapter(h) + (1 - ratio) * h``
            (0.2).
    """

    def __init__(self, config, adapter_reduction: int = 4, adapter_ratio: float = 0.2) -> None:
        super().__init__()
        from transformers import CLIPSegModel

        proj = config.projection_dim
        self.config = config
        self.adapter_ratio = float(adapter_ratio)
        self.non_object_embedding = nn.Parameter(torch.empty(1, proj))
        nn.init.normal_(self.non_object_embedding, std=proj**-0.5)
        self.clip = CLIPSegModel(config)
        self.decoder = PartCLIPSegDecoder(config)
        self.visual_adapter = Adapter(config.vision_config.hidden_size, adapter_reduction)
        self.text_adapter = Adapter(proj, adapter_reduction)
        self.tunable_linear = nn.Linear(proj, 1000, bias=False)
        nn.init.zeros_(self.tunable_linear.weight)
        _make_position_ids_persistent(self.clip)
        self.reset_decoder_parameters()
        self.extract_layers = [int(i) for i in config.extract_layers]
        self.eot_token_id = 49407

    def reset_decoder_parameters(self) -> None:
        """PyTorch's default initialisation for the decoder's linear/conv layers and the adapters.

        transformers initialises a stand-alone CLIPSeg decoder with a version-dependent rule (5.x
        draws its weights with std ``initializer_factor`` = 1.0, which makes the logits of an
        untrained model explode); a released or CLIPSeg checkpoint overwrites all of it anyway.
        The second FiLM and upsampler are then copies of the first, as officially.
        """
        for module in [*self.decoder.modules(), *self.visual_adapter.modules(), *self.text_adapter.modules()]:
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.LayerNorm)):
                module.reset_parameters()
        self.decoder.copy_branch_weights()

    # ------------------------------------------------------------------ text
    def text_parameters(self) -> list[torch.Tensor]:
        """Every tensor the class-name features depend on (text tower, projection, background)."""
        return [*self.clip.text_model.parameters(), self.clip.text_projection.weight, self.non_object_embedding]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Projected end-of-text features (N, projection_dim) — CLIPSeg's ``get_text_features``.

        Only the first L positions run, L = the last end-of-text position + 1: the text tower is
        causal and pools the first end-of-text token, so later positions never reach the result.
        """
        is_eot = input_ids == self.eot_token_id
        if not bool(is_eot.any(dim=1).all()):
            raise ValueError("every token row needs an end-of-text token")
        length = int(is_eot.int().argmax(dim=1).max()) + 1
        input_ids = input_ids[:, :length]
        attention_mask = attention_mask[:, :length] if attention_mask is not None else None
        out = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.clip.text_projection(out.pooler_output)

    def conditional_embeddings(self, text_features: torch.Tensor) -> torch.Tensor:
        """The C = N + 1 decoder conditions: the text features, then ``non_object_embedding``.

        The official forward adds ``text_adapter(e) * 0.0``; that term is exactly zero for finite
        features and is not computed.
        """
        return torch.cat([text_features, self.non_object_embedding.to(text_features.dtype)], dim=0)

    # ------------------------------------------------------------------ vision
    def visual_activations(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states after the vision layers ``extract_layers``, blended with the visual adapter.

        Runs the tower only up to the deepest extracted layer (the rest feeds nothing). Gradients
        are tracked only if some vision parameter is trainable.
        """
        vision = self.clip.vision_model
        track = torch.is_grad_enabled() and any(p.requires_grad for p in vision.parameters())
        wanted = set(self.extract_layers)
        found: dict[int, torch.Tensor] = {}
        with torch.set_grad_enabled(track):
            hidden = vision.pre_layrnorm(_vision_embeddings(vision.embeddings, pixel_values))
            for index, layer in enumerate(vision.encoder.layers[: max(wanted) + 1]):
                hidden, _ = run_clipseg_layer(layer, hidden)
                if index in wanted:
                    found[index] = hidden
        r = self.adapter_ratio
        return [self.visual_adapter(found[i]) * r + found[i] * (1.0 - r) for i in self.extract_layers]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        conditions: torch.Tensor,
        part_index: torch.Tensor,
        obj_index: torch.Tensor,
        num_parts: int,
        attention_layers: Sequence[int] = (),
        object_text_offset: int = 0,
    ) -> PartCLIPSegDecoderOutput:
        """Logits of both heads for a batch of pixel values under the given conditions."""
        activations = self.visual_activations(pixel_values)
        return self.decoder(
            activations, conditions, part_index, obj_index, num_parts,
            attention_layers=attention_layers, object_text_offset=object_text_offset,
        )

    def load_clipseg_weights(self, state_dict: dict) -> tuple[list[str], list[str]]:
        """Load a ``CLIPSegForImageSegmentation`` state dict (e.g. ``CIDAS/clipseg-rd64-refined``).

        The official training starts from that checkpoint: CLIP and the CLIPSeg decoder load, the
        PartCLIPSeg additions keep their initialisation, and the second FiLM and upsampler are then
        copied from the first. Returns (missing, unexpected) keys.
        """
        state = {k[len("partclipseg_model."):] if k.startswith("partclipseg_model.") else k: v
                 for k, v in state_dict.items()}
        result = self.load_state_dict(state, strict=False)
        self.decoder.copy_branch_weights()
        return list(result.missing_keys), list(result.unexpected_keys)
