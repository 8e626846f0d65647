"""PartCATSeg meta-architecture: CLIP + DINOv2 guidance + two-stage part cost aggregation.

Inputs and outputs follow the model protocol (:mod:`partcatseg.modeling.meta_arch`).  Everything that
depends on a dataset — the vocabularies and the object list used for Oracle-Obj — comes in as
:class:`~partcatseg.vocab.Vocabulary` objects, so the same weights serve the paper's datasets, the toy
set and a user's own words.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..vocab import Vocabulary, label_maps
from . import config_map
from .clip import encode_image_dense
from .dinov2 import DINOv2Backbone
from .losses import partcatseg_losses
from .meta_arch import META_ARCH_REGISTRY, SegmentationModel, oracle_scores, record_object_index
from .part_aggregator import PartAggregator
from .preprocess import normalize_pad_resize, resize_to_output
from .pretrained import clip_and_dinov2, fill_pretrained
from .speed import apply_channels_last, autocast_context, compile_modules
from .text import TextFeatureCache, forget_text_fingerprint, text_tower_fingerprint

__all__ = ["PartCATSeg", "PartCATSegHead", "PartCATSegPredictor", "VocabTensors", "set_clip_trainable", "LABEL_SENTINEL"]

# Label lookup tables cover every 16-bit id; ids without an entry map to this value. It only marks
# "no entry", so the dataset's own ignore id (255 or 65535) does not need to be known.
LABEL_SENTINEL = 65535


class PartCATSegPredictor(nn.Module):
    """Holds CLIP, the background embedding and the aggregator under the official key names."""

    def __init__(self, clip_model: nn.Module, transformer: PartAggregator, bg_on: bool = True) -> None:
        super().__init__()
        self.clip_model = clip_model
        self.bg_on = bg_on
        if bg_on:
            dim = clip_model.text_projection.shape[-1]
            self.non_object_embedding = nn.Parameter(torch.empty(1, dim))
            nn.init.normal_(self.non_object_embedding, std=clip_model.transformer.width**-0.5)
        self.transformer = transformer


class PartCATSegHead(nn.Module):
    """Parameter-free level of the official module tree (``sem_seg_head.predictor.*``)."""

    def __init__(self, predictor: PartCATSegPredictor) -> None:
        super().__init__()
        self.predictor = predictor


@dataclass
class VocabTensors:
    """A part vocabulary made ready for the network: text features and index maps on a device."""

    vocab: Vocabulary
    text_part_obj: torch.Tensor  # (Np + No + 1, P, C): parts ++ objects ++ background
    text_specific: torch.Tensor  # (Nop + 1, P, C): object-specific parts ++ background
    class_to_part: torch.Tensor  # (Nop,)
    class_to_object: torch.Tensor  # (Nop,)


@META_ARCH_REGISTRY.register()
class PartCATSeg(SegmentationModel):
    """Open-vocabulary part segmentation (Choi et al., CVPR 2025).

    Args:
        backbone: DINOv2 guidance backbone (``backbone.dinov2.*`` keys).
        clip_model: open_clip CLIP (frozen unless ``clip_finetune`` says otherwise).
        aggregator: the two-stage :class:`PartAggregator`.
        train_vocabulary / test_vocabulary: part vocabularies ("cat's head", ...); their ``objects``
            are the object lists that training ``sem_seg`` ids and inference ``object_class`` index.
        templates: prompt templates (80 ImageNet ones officially).
        ignore_value: ignore id of training part maps (``SEM_SEG_HEAD.IGNORE_VALUE``).
        text_cache: where text features are cached.
        inference_amp: ``TEST.AMP`` autocast at inference ("", "bf16", "fp16").
        channels_last / compile: the opt-in speed modes of :mod:`partcatseg.modeling.speed`.
        pretrained_weights: ``{"dinov2": ..., "clip": ...}`` weights names or paths that
            :meth:`load_pretrained` reads when training from scratch (never at construction).
        grad_checkpointing: activation checkpointing in training (:meth:`set_grad_checkpointing`).
    """

    task = "part"

    def __init__(
        self,
        *,
        backbone: DINOv2Backbone,
        clip_model: nn.Module,
        aggregator: PartAggregator,
        train_vocabulary: Vocabulary,
        test_vocabulary: Vocabulary,
        templates: Sequence[str],
        ignore_value: int = 255,
        bg_on: bool = True,
        clip_finetune: str = "",
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        clip_pixel_mean: Sequence[float] = (122.7709383, 116.7460125, 104.09373615),
        clip_pixel_std: Sequence[float] = (68.5005327, 66.6321579, 70.3231630),
        size_divisibility: int = 32,
        clip_resolution: tuple[int, int] = (384, 384),
        text_cache: Optional[TextFeatureCache] = None,
        copy_stage_weights: bool = True,
        input_format: str = "RGB",
        inference_amp: str = "",
        channels_last: bool = False,
        compile: bool = False,
        pretrained_weights: Optional[dict[str, str]] = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(train_vocabulary=train_vocabulary, test_vocabulary=test_vocabulary, input_format=input_format)
        self.pretrained_weights = dict(pretrained_weights or {})
        self.backbone = backbone
        self.sem_seg_head = PartCATSegHead(PartCATSegPredictor(clip_model, aggregator, bg_on))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("clip_pixel_mean", torch.tensor(clip_pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("clip_pixel_std", torch.tensor(clip_pixel_std).view(-1, 1, 1), False)
        self.templates = list(templates)
        self.ignore_value = ignore_value
        self.bg_on = bg_on
        self.size_divisibility = size_divisibility
        self.clip_resolution = tuple(clip_resolution)
        self.text_cache = text_cache or TextFeatureCache(None)
        self._vocab_tensors: dict[tuple, VocabTensors] = {}
        self.inference_amp = inference_amp
        self._train_maps: Optional[tuple[torch.Tensor, torch.Tensor]] = None

        set_clip_trainable(clip_model, clip_finetune)
        if copy_stage_weights:
            aggregator.copy_stage_weights()
        aggregator.layers_object.requires_grad_(False)
        self.set_grad_checkpointing(grad_checkpointing)
        autocast_context(self.device, inference_amp)  # validates the mode now, not at the first image
        if channels_last:
            apply_channels_last(self)
        if compile:
            compile_modules([aggregator, backbone, clip_model.visual])

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        agg = config_map.aggregator_kwargs(cfg)
        templates = config_map.templates_from_config(cfg)
        # ATTENTION_TYPE is read but ignored by the official aggregator: its class attention is always
        # the "query" (class-competition) variant.
        aggregator = PartAggregator(
            **agg, attention_type="query", prompt_channel=len(templates), **config_map.inference_kwargs(cfg, agg)
        )
        return dict(
            backbone=config_map.dinov2_from_config(cfg),
            clip_model=config_map.clip_from_config(cfg),
            aggregator=aggregator,
            templates=templates,
            clip_resolution=config_map.clip_resolution_from_config(cfg),
            text_cache=config_map.text_cache_from_config(cfg),
            pretrained_weights=config_map.pretrained_from_config(cfg),
            **config_map.vocabularies_from_config(cfg),
            **config_map.config_values(
                cfg, config_map.MODEL_KEYS, "ignore_value", "bg_on", "clip_finetune", "pixel_mean", "pixel_std",
                "clip_pixel_mean", "clip_pixel_std", "size_divisibility", "input_format", "inference_amp",
                "channels_last", "compile", "grad_checkpointing",
            ),
        )

    def load_pretrained(self, missing=None) -> list[str]:
        return fill_pretrained(self, clip_and_dinov2(self.clip_model, self.backbone, self.pretrained_weights), missing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the CLIP and DINOv2 blocks and the aggregator's steps (both stages) in training."""
        self.grad_checkpointing = bool(enable)
        self.backbone.set_grad_checkpointing(enable)
        self.aggregator.set_grad_checkpointing(enable)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "stage1_classes": self.vocabulary.num_text_classes_stage1,
                "stage2_classes": self.vocabulary.num_text_classes_stage2, "templates": len(self.templates),
                "class_chunk": self.aggregator.class_chunk, "inference_amp": self.inference_amp or "fp32"}

    def profile_stages(self) -> dict[str, list[tuple[Any, str]]]:
        return {"image encoders": [(self, "extract_features")], **self.aggregator.profile_stages(),
                "output maps": [(self, "_postprocess")]}

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def clip_model(self) -> nn.Module:
        return self.sem_seg_head.predictor.clip_model

    @property
    def aggregator(self) -> PartAggregator:
        return self.sem_seg_head.predictor.transformer

    # ----------------------------------------------------------------- vocabulary
    def background_text(self, num_templates: int) -> torch.Tensor:
        """(1, P, C) background prompt: the checkpoint's ``non_object_embedding``, normalised."""
        emb = self.sem_seg_head.predictor.non_object_embedding.detach()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return emb.unsqueeze(1).expand(1, num_templates, -1)

    def vocab_tensors(self, vocab: Vocabulary) -> VocabTensors:
        """Text features and index maps of ``vocab`` (computed once, then cached)."""
        names = tuple(vocab.classes)
        bg_version = self.sem_seg_head.predictor.non_object_embedding._version if self.bg_on else 0
        key = (names, str(self.device), text_tower_fingerprint(self.clip_model), bg_version)
        cached = self._vocab_tensors.get(key)
        if cached is not None:
            return cached
        clip_model = self.clip_model
        part_obj = self.text_cache.get(clip_model, list(vocab.part_classes) + list(vocab.object_classes), self.templates)
        specific = self.text_cache.get(clip_model, list(vocab.classes), self.templates)
        if self.bg_on:
            bg = self.background_text(len(self.templates)).to(part_obj)
            part_obj = torch.cat([part_obj, bg], dim=0)
            specific = torch.cat([specific, bg], dim=0)
        tensors = VocabTensors(
            vocab=vocab,
            text_part_obj=part_obj,
            text_specific=specific,
            class_to_part=torch.as_tensor(vocab.class_to_part, dtype=torch.long, device=self.device),
            class_to_object=torch.as_tensor(vocab.class_to_object, dtype=torch.long, device=self.device),
        )
        self._vocab_tensors = {key: tensors, **{k: v for k, v in self._vocab_tensors.items() if k[0] != names}}
        return tensors

    def prepare_vocabulary(self, vocabulary: Optional[Vocabulary] = None, *, refresh: bool = False) -> None:
        if refresh:
            self._vocab_tensors = {}
            self.text_cache.clear_memory()
            forget_text_fingerprint(self.clip_model)
        with torch.no_grad():
            self.vocab_tensors(self._check_vocabulary(vocabulary) if vocabulary is not None else self.vocabulary)

    # ----------------------------------------------------------------- features
    def extract_features(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Dense CLIP features (B, C, h, w) and DINOv2 guidance for uint8/float (3, H, W) images."""
        images = [im.to(self.device) for im in images]
        clip_in = normalize_pad_resize(
            images, self.clip_pixel_mean, self.clip_pixel_std, self.size_divisibility, self.clip_resolution
        )
        ckpt = self.grad_checkpointing and self.training
        dense, _ = encode_image_dense(self.clip_model, clip_in, grad_checkpointing=ckpt)
        b, n, c = dense.shape
        side = int(round((n - 1) ** 0.5))
        clip_feats = dense[:, 1:].transpose(1, 2).reshape(b, c, side, side)
        size = (self.backbone.input_size, self.backbone.input_size)
        dino_in = normalize_pad_resize(images, self.pixel_mean, self.pixel_std, self.size_divisibility, size)
        return clip_feats, self.backbone(dino_in)

    def head(self, clip_feats: torch.Tensor, dino_feats: dict, tensors: VocabTensors, decode_part_obj: bool = True):
        """Both stages' logits (B, T1, 4h, 4w) (None if not ``decode_part_obj``), (B, T2, 4h, 4w) and the costs."""
        b = clip_feats.shape[0]
        vis = [dino_feats["res4"], dino_feats["res3"], dino_feats["res2"]]
        return self.aggregator(
            clip_feats,
            tensors.text_part_obj.unsqueeze(0).expand(b, -1, -1, -1),
            tensors.text_specific.unsqueeze(0).expand(b, -1, -1, -1),
            vis,
            tensors.class_to_part,
            tensors.class_to_object,
            len(tensors.vocab.part_classes),
            decode_part_obj=decode_part_obj,
        )

    # ----------------------------------------------------------------- forward
    def forward(self, batched_inputs: list[dict]):
        images = [x["image"] for x in batched_inputs]
        if self.training:
            clip_feats, dino_feats = self.extract_features(images)
            return self._losses(batched_inputs, clip_feats, dino_feats)
        with torch.no_grad():
            tensors = self.vocab_tensors(self.vocabulary)  # fp32, outside autocast (it is cached)
            with autocast_context(self.device, self.inference_amp):
                clip_feats, dino_feats = self.extract_features(images)
                # the stage-1 logits are a training signal only: their decoder is skipped here
                _, logits, _ = self.head(clip_feats, dino_feats, tensors, decode_part_obj=False)
        return self._postprocess(batched_inputs, logits.float())

    def _train_lookup(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train_maps is None or self._train_maps[0].device != self.device:
            maps = label_maps(self.train_vocabulary, LABEL_SENTINEL)
            self._train_maps = (
                torch.as_tensor(maps.text_to_part_map, dtype=torch.long, device=self.device),
                torch.as_tensor(maps.obj_to_obj_in_part_map, dtype=torch.long, device=self.device),
            )
        return self._train_maps

    def _losses(self, batched_inputs, clip_feats, dino_feats) -> dict[str, torch.Tensor]:
        vocab = self.train_vocabulary
        tensors = self.vocab_tensors(vocab)
        part_obj, specific, costs = self.head(clip_feats, dino_feats, tensors)
        targets = torch.stack([x["obj_part_sem_seg"] for x in batched_inputs]).to(self.device).long()
        obj_targets = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device).long()
        text_to_part, obj_to_obj_in_part = self._train_lookup()
        return partcatseg_losses(
            part_obj, specific, costs, targets, obj_targets,
            text_to_part=text_to_part,
            obj_to_obj_in_part=obj_to_obj_in_part,
            class_to_object=tensors.class_to_object,
            num_parts=len(vocab.part_classes),
            num_objects=len(vocab.object_classes),
            ignore_value=self.ignore_value,
            ignore_label=LABEL_SENTINEL,
            bg_on=self.bg_on,
        )

    @torch.no_grad()
    def _postprocess(self, batched_inputs, logits: torch.Tensor) -> list[dict]:
        """Per-record probabilities at the output size, with the Oracle-Obj masking."""
        probs = logits.sigmoid()
        results = []
        for record, prob in zip(batched_inputs, probs):
            height = int(record.get("height", record["image"].shape[-2]))
            width = int(record.get("width", record["image"].shape[-1]))
            prob_all = resize_to_output(prob, height, width)
            parts = prob_all[:-1] if self.bg_on else prob_all
            parts = oracle_scores(parts, self.vocabulary, record_object_index(record))
            results.append({"sem_seg": parts, "sem_seg_all": prob_all})
        return results


def set_clip_trainable(clip_model: nn.Module, mode: str) -> None:
    """Apply the official ``CLIP_FINETUNE`` modes of the PartCATSeg/pre-CVPR code to CLIP.

    Only visual parameters can train: "attention" (names containing "attn" or "position"),
    "full" (all visual), "prompt" (VPT tokens, none here); anything else freezes CLIP.
    """
    for name, param in clip_model.named_parameters():
        trainable = False
        if name.startswith("visual."):
            if mode == "attention":
                trainable = "attn" in name or "position" in name
            elif mode == "full":
                trainable = True
            elif mode == "prompt":
                trainable = "prompt" in name
        param.requires_grad_(trainable)
