"""Config keys -> constructor arguments: the one table every ``from_config`` reads through.

Network modules take explicit arguments and never see a config; each meta-architecture's
``from_config(cfg)`` assembles its arguments from the tables and builders here, so the renaming
of YAML keys (``HIDDEN_DIMS`` -> ``hidden_dim``, ``NUM_HEADS`` -> ``nheads`` ...) happens in one place.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..config import ConfigError, resolve_device, resolve_text_cache_dir
from ..vocab import Vocabulary, dataset_vocabulary, get_templates

__all__ = [
    "AGGREGATOR_KEYS",
    "MODEL_KEYS",
    "config_values",
    "aggregator_kwargs",
    "clip_resolution_for",
    "clip_resolution_from_config",
    "clip_from_config",
    "dinov2_from_config",
    "text_cache_from_config",
    "templates_from_config",
    "vocabularies_from_config",
    "inference_kwargs",
    "pretrained_from_config",
    "check_head_dims",
]

# MODEL.SEM_SEG_HEAD.<key> -> cost-aggregator argument (shared by every CAT-Seg-style aggregator).
AGGREGATOR_KEYS: dict[str, str] = {
    "TEXT_GUIDANCE_DIM": "text_guidance_dim",
    "TEXT_GUIDANCE_PROJ_DIM": "text_guidance_proj_dim",
    "APPEARANCE_GUIDANCE_DIM": "appearance_guidance_dim",
    "APPEARANCE_GUIDANCE_PROJ_DIM": "appearance_guidance_proj_dim",
    "DECODER_DIMS": "decoder_dims",
    "DECODER_GUIDANCE_DIMS": "decoder_guidance_dims",
    "DECODER_GUIDANCE_PROJ_DIMS": "decoder_guidance_proj_dims",
    "NUM_LAYERS": "num_layers",
    "NUM_HEADS": "nheads",
    "HIDDEN_DIMS": "hidden_dim",
    "POOLING_SIZES": "pooling_size",
    "FEATURE_RESOLUTION": "feature_resolution",
    "WINDOW_SIZES": "window_size",
}

# Full config key -> meta-architecture argument (each model's from_config picks the ones it takes).
MODEL_KEYS: dict[str, str] = {
    "INPUT.FORMAT": "input_format",
    "MODEL.PIXEL_MEAN": "pixel_mean",
    "MODEL.PIXEL_STD": "pixel_std",
    "MODEL.CLIP_PIXEL_MEAN": "clip_pixel_mean",
    "MODEL.CLIP_PIXEL_STD": "clip_pixel_std",
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": "size_divisibility",
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": "ignore_value",
    "MODEL.SEM_SEG_HEAD.BG_ON": "bg_on",
    "MODEL.SEM_SEG_HEAD.CLIP_FINETUNE": "clip_finetune",
    "TEST.SLIDING_WINDOW": "sliding_window",
    "TEST.AMP": "inference_amp",
    "MODEL.CHANNELS_LAST": "channels_last",
    "MODEL.COMPILE": "compile",
    "MODEL.GRADIENT_CHECKPOINTING": "grad_checkpointing",
}


def _lookup(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return tuple(node) if isinstance(node, list) else node


def config_values(cfg: Any, keys: Mapping[str, str], *names: str) -> dict[str, Any]:
    """``{argument: value}`` for the arguments ``names`` (all of ``keys`` if none) of a key table."""
    wanted = set(names) if names else set(keys.values())
    unknown = wanted - set(keys.values())
    if unknown:
        raise KeyError(f"no config key maps to argument(s) {sorted(unknown)}")
    return {arg: _lookup(cfg, key) for key, arg in keys.items() if arg in wanted}


def aggregator_kwargs(cfg: Any) -> dict[str, Any]:
    """Cost-aggregator arguments from ``MODEL.SEM_SEG_HEAD`` (see :data:`AGGREGATOR_KEYS`)."""
    return {arg: _lookup(cfg.MODEL.SEM_SEG_HEAD, key) for key, arg in AGGREGATOR_KEYS.items()}


def clip_resolution_for(clip_pretrained: str, override: int = 0) -> tuple[int, int]:
    """Officially 384x384 for ViT-B/16 and 336x336 for every other CLIP (24x24 patch grid)."""
    if override:
        return (override, override)
    return (384, 384) if clip_pretrained == "ViT-B/16" else (336, 336)


def clip_resolution_from_config(cfg: Any) -> tuple[int, int]:
    return clip_resolution_for(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED, cfg.MODEL.CLIP_RESOLUTION)


def clip_from_config(cfg: Any) -> nn.Module:
    """open_clip CLIP of ``SEM_SEG_HEAD.CLIP_PRETRAINED`` / ``MODEL.CLIP_ARCH`` (``tiny``: ``MODEL.TINY_CLIP``)."""
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


def dinov2_from_config(cfg: Any) -> nn.Module:
    """DINOv2 guidance backbone of ``MODEL.DINO_ARCH`` (``tiny``: ``MODEL.TINY_DINO``) at ``DINO_INPUT_SIZE``."""
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


def text_cache_from_config(cfg: Any):
    """The on-disk text-feature cache under ``MODEL.TEXT_CACHE_DIR``."""
    from .text import TextFeatureCache

    return TextFeatureCache(str(resolve_text_cache_dir(cfg)))


def templates_from_config(cfg: Any) -> list[str]:
    """Prompt templates of ``MODEL.PROMPT_ENSEMBLE_TYPE``."""
    return get_templates(cfg.MODEL.PROMPT_ENSEMBLE_TYPE)


def vocabularies_from_config(cfg: Any) -> dict[str, Vocabulary]:
    """``train_vocabulary`` of ``DATASETS.TRAIN[0]`` and ``test_vocabulary`` of ``DATASETS.TEST[0]``.

    Without a test set (a training-only job) inference uses the training vocabulary until changed.
    """
    if not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: the model's training vocabulary comes from DATASETS.TRAIN[0]")
    train = dataset_vocabulary(cfg.DATASETS.TRAIN[0])
    test = dataset_vocabulary(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else train
    return {"train_vocabulary": train, "test_vocabulary": test}


def pretrained_from_config(cfg: Any) -> dict[str, str]:
    """Pretrained encoder weights for training from scratch: ``{"dinov2": ..., "clip": ...}`` (names or paths).

    ``MODEL.CLIP_WEIGHTS: auto`` is the OpenAI CLIP of ``SEM_SEG_HEAD.CLIP_PRETRAINED`` (none for tiny CLIPs).
    """
    from .clip import OPENAI_CLIP_WEIGHTS

    clip = cfg.MODEL.CLIP_WEIGHTS
    if clip == "auto":
        clip = "" if cfg.MODEL.CLIP_ARCH == "tiny" else OPENAI_CLIP_WEIGHTS.get(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED, "")
    return {"dinov2": cfg.MODEL.DINO_WEIGHTS, "clip": clip}


def inference_kwargs(cfg: Any, aggregator_kwargs_: Mapping[str, Any]) -> dict[str, Any]:
    """``TEST.CLASS_CHUNK`` resolved for the aggregator and the device (0 = automatic)."""
    from .speed import resolve_class_chunk

    return {
        "class_chunk": resolve_class_chunk(
            cfg.TEST.CLASS_CHUNK,
            tuple(aggregator_kwargs_["feature_resolution"]),
            aggregator_kwargs_["hidden_dim"],
            resolve_device(cfg),
        )
    }


def check_head_dims(cfg: Any, expected: Mapping[str, Any], why: str) -> None:
    """Fail early, naming every ``SEM_SEG_HEAD`` dimension that cannot match the built modules."""
    head = cfg.MODEL.SEM_SEG_HEAD
    wrong = []
    for key, want in expected.items():
        got = getattr(head, key)
        got = list(got) if isinstance(want, list) else got
        if got != want:
            wrong.append(f"MODEL.SEM_SEG_HEAD.{key}={got!r} (expected {want!r})")
    if wrong:
        raise ConfigError(f"{why}:\n  " + "\n  ".join(wrong))
