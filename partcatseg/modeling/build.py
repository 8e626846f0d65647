"""``build_model(cfg)``: the only place where config keys become network constructor arguments.

Meta-architectures are registered by their official ``MODEL.META_ARCHITECTURE`` names in an fvcore
``Registry`` of *builder functions* (``cfg -> nn.Module``), detectron2's pattern without its
``@configurable`` magic.
"""
from __future__ import annotations

import logging

from fvcore.common.registry import Registry
from torch import nn

from ..config import resolve_device, resolve_text_cache_dir
from ..vocab import PartVocabulary, get_templates
from .speed import configure_inference

__all__ = ["META_ARCH_REGISTRY", "register_meta_arch", "build_model", "partcatseg_from_config", "clip_resolution_for"]

logger = logging.getLogger(__name__)

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = "Builders (cfg -> nn.Module) keyed by MODEL.META_ARCHITECTURE."


def register_meta_arch(name: str):
    """Register a builder under an explicit name (fvcore's decorator uses the function's name)."""

    def deco(fn):
        META_ARCH_REGISTRY._do_register(name, fn)
        return fn

    return deco


def clip_resolution_for(clip_pretrained: str, override: int = 0) -> tuple[int, int]:
    """Officially 384x384 for ViT-B/16 and 336x336 for every other CLIP (24x24 patch grid)."""
    if override:
        return (override, override)
    return (384, 384) if clip_pretrained == "ViT-B/16" else (336, 336)


def clip_resolution_from_config(cfg) -> tuple[int, int]:
    return clip_resolution_for(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED, cfg.MODEL.CLIP_RESOLUTION)


def build_clip_from_config(cfg) -> nn.Module:
    from .clip import build_clip, clip_arch_for

    if cfg.MODEL.CLIP_ARCH == "tiny":
        t = cfg.MODEL.TINY_CLIP
        tiny = dict(
            embed_dim=t.EMBED_DIM, width=t.WIDTH, layers=t.LAYERS, heads=t.HEADS, patch_size=t.PATCH_SIZE,
            image_size=clip_resolution_from_config(cfg)[0], text_width=t.TEXT_WIDTH,
            text_layers=t.TEXT_LAYERS, text_heads=t.TEXT_HEADS,
        )
        return build_clip("tiny", tiny=tiny)
    return build_clip(clip_arch_for(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED, cfg.MODEL.CLIP_ARCH))


def build_dinov2_from_config(cfg) -> nn.Module:
    from .dinov2 import DINOv2Backbone

    side = cfg.MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION[0]
    arch, kwargs = cfg.MODEL.DINO_ARCH, {}
    if arch == "tiny":
        t = cfg.MODEL.TINY_DINO
        arch, kwargs = "vit_small_patch14_dinov2", dict(embed_dim=t.EMBED_DIM, depth=t.DEPTH, num_heads=t.NUM_HEADS)
    return DINOv2Backbone(
        arch=arch,
        input_size=cfg.MODEL.DINO_INPUT_SIZE,
        out_sizes=(side * 4, side * 2, side),
        model_kwargs=kwargs,
    )


def text_cache_from_config(cfg):
    from .text import TextFeatureCache

    return TextFeatureCache(str(resolve_text_cache_dir(cfg)))


def aggregator_kwargs(cfg) -> dict:
    """Aggregator arguments shared by every variant (official SEM_SEG_HEAD keys)."""
    head = cfg.MODEL.SEM_SEG_HEAD
    return dict(
        text_guidance_dim=head.TEXT_GUIDANCE_DIM,
        text_guidance_proj_dim=head.TEXT_GUIDANCE_PROJ_DIM,
        appearance_guidance_dim=head.APPEARANCE_GUIDANCE_DIM,
        appearance_guidance_proj_dim=head.APPEARANCE_GUIDANCE_PROJ_DIM,
        decoder_dims=tuple(head.DECODER_DIMS),
        decoder_guidance_dims=tuple(head.DECODER_GUIDANCE_DIMS),
        decoder_guidance_proj_dims=tuple(head.DECODER_GUIDANCE_PROJ_DIMS),
        num_layers=head.NUM_LAYERS,
        nheads=head.NUM_HEADS,
        hidden_dim=head.HIDDEN_DIMS,
        pooling_size=tuple(head.POOLING_SIZES),
        feature_resolution=tuple(head.FEATURE_RESOLUTION),
        window_size=head.WINDOW_SIZES,
    )


@register_meta_arch("PartCATSeg")
def partcatseg_from_config(cfg) -> nn.Module:
    from ..data.catalog import MetadataCatalog
    from .part_aggregator import PartAggregator
    from .partcatseg import PartCATSeg

    head = cfg.MODEL.SEM_SEG_HEAD
    train_meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    # no test set (e.g. a training-only job): inference uses the training vocabulary until changed
    test_meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else train_meta
    templates = get_templates(cfg.MODEL.PROMPT_ENSEMBLE_TYPE)
    # ATTENTION_TYPE is read but ignored by the official aggregator: its class attention is always
    # the "query" (class-competition) variant.
    aggregator = PartAggregator(**aggregator_kwargs(cfg), attention_type="query", prompt_channel=len(templates))
    return PartCATSeg(
        backbone=build_dinov2_from_config(cfg),
        clip_model=build_clip_from_config(cfg),
        aggregator=aggregator,
        train_vocab=PartVocabulary(train_meta.stuff_classes),
        test_vocab=PartVocabulary(test_meta.stuff_classes),
        train_obj_classes=train_meta.obj_classes,
        test_obj_classes=test_meta.obj_classes,
        templates=templates,
        ignore_value=head.IGNORE_VALUE,
        ignore_label=test_meta.ignore_label,
        bg_on=head.BG_ON,
        clip_finetune=head.CLIP_FINETUNE,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        clip_pixel_mean=cfg.MODEL.CLIP_PIXEL_MEAN,
        clip_pixel_std=cfg.MODEL.CLIP_PIXEL_STD,
        size_divisibility=cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
        clip_resolution=clip_resolution_from_config(cfg),
        text_cache=text_cache_from_config(cfg),
    )


def _register_catseg() -> None:
    """CAT-Seg's builder lives with its model; registered lazily to keep imports light."""
    if "CATSeg" not in META_ARCH_REGISTRY:
        from .catseg import catseg_from_config

        register_meta_arch("CATSeg")(catseg_from_config)


def build_model(cfg) -> nn.Module:
    """Build ``MODEL.META_ARCHITECTURE`` on ``MODEL.DEVICE`` with random weights (no network).

    Load weights afterwards with :class:`partcatseg.checkpoint.Checkpointer`.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name == "CATSeg":
        _register_catseg()
    if name not in META_ARCH_REGISTRY:
        known = sorted(k for k, _ in META_ARCH_REGISTRY) + (["CATSeg"] if "CATSeg" not in META_ARCH_REGISTRY else [])
        raise KeyError(f"MODEL.META_ARCHITECTURE={name!r} is not registered; known: {known}")
    model = META_ARCH_REGISTRY.get(name)(cfg)
    configure_inference(model, cfg)  # TEST.CLASS_CHUNK, TEST.AMP, MODEL.CHANNELS_LAST, MODEL.COMPILE
    device = resolve_device(cfg)
    model.to(device)
    logger.info("built %s on %s (%.1fM parameters)", name, device, sum(p.numel() for p in model.parameters()) / 1e6)
    return model
