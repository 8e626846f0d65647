"""PartCATSeg meta-architecture: CLIP + DINOv2 guidance + two-stage part cost aggregation.

Inputs and outputs follow detectron2's convention (a list of per-image dicts).  Everything that
depends on a dataset — the vocabularies and the object list used for Oracle-Obj — is passed in as
plain lists, so the same weights serve the paper's datasets, the toy set and a user's own words.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..vocab import PartVocabulary, oracle_class_mask
from .clip import encode_image_dense
from .dinov2 import DINOv2Backbone
from .losses import partcatseg_losses
from .part_aggregator import PartAggregator
from .preprocess import normalize_pad_resize, resize_to_output
from .speed import autocast_context
from .text import TextFeatureCache, text_tower_fingerprint

__all__ = ["PartCATSeg", "PartCATSegHead", "PartCATSegPredictor", "VocabTensors"]


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

    vocab: PartVocabulary
    text_part_obj: torch.Tensor  # (Np + No + 1, P, C): parts ++ objects ++ background
    text_specific: torch.Tensor  # (Nop + 1, P, C): object-specific parts ++ background
    class_to_part: torch.Tensor  # (Nop,)
    class_to_object: torch.Tensor  # (Nop,)


class PartCATSeg(nn.Module):
    """Open-vocabulary part segmentation (Choi et al., CVPR 2025).

    Args:
        backbone: DINOv2 guidance backbone (``backbone.dinov2.*`` keys).
        clip_model: open_clip CLIP (frozen unless ``clip_finetune`` says otherwise).
        aggregator: the two-stage :class:`PartAggregator`.
        train_vocab / test_vocab: object-specific part vocabularies ("cat's head", ...).
        train_obj_classes: object list whose ids appear in training ``sem_seg`` maps.
        test_obj_classes: object list that inference's ``object_class`` indexes (Oracle-Obj).
        templates: prompt templates (80 ImageNet ones officially).
        ignore_value: ignore id of training part maps (``SEM_SEG_HEAD.IGNORE_VALUE``).
        ignore_label: ignore id of the (test) dataset; sizes the label lookup tables.
        text_cache: where text features are cached.
    """

    def __init__(
        self,
        *,
        backbone: DINOv2Backbone,
        clip_model: nn.Module,
        aggregator: PartAggregator,
        train_vocab: PartVocabulary,
        test_vocab: PartVocabulary,
        train_obj_classes: Sequence[str],
        test_obj_classes: Sequence[str],
        templates: Sequence[str],
        ignore_value: int = 255,
        ignore_label: int = 255,
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
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = PartCATSegHead(PartCATSegPredictor(clip_model, aggregator, bg_on))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("clip_pixel_mean", torch.tensor(clip_pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("clip_pixel_std", torch.tensor(clip_pixel_std).view(-1, 1, 1), False)
        self.train_vocab = train_vocab
        self.test_vocab = test_vocab
        self.train_obj_classes = list(train_obj_classes)
        self.test_obj_classes = list(test_obj_classes)
        self.templates = list(templates)
        self.ignore_value = ignore_value
        self.ignore_label = ignore_label
        self.bg_on = bg_on
        self.size_divisibility = size_divisibility
        self.clip_resolution = tuple(clip_resolution)
        self.text_cache = text_cache or TextFeatureCache(None)
        self._vocab_tensors: dict[tuple, VocabTensors] = {}
        self.inference_amp = ""  # TEST.AMP (see .speed); "" = fp32
        self._train_maps: Optional[tuple[torch.Tensor, torch.Tensor]] = None

        set_clip_trainable(clip_model, clip_finetune)
        if copy_stage_weights:
            aggregator.copy_stage_weights()
        aggregator.layers_object.requires_grad_(False)

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

    def vocab_tensors(self, vocab: PartVocabulary) -> VocabTensors:
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

    def set_test_vocabulary(self, vocab: PartVocabulary, obj_classes: Optional[Sequence[str]] = None) -> None:
        """Change what inference segments (no retraining: the vocabulary is an input)."""
        self.test_vocab = vocab
        self.test_obj_classes = list(obj_classes) if obj_classes is not None else list(vocab.object_classes)

    # ----------------------------------------------------------------- features
    def extract_features(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Dense CLIP features (B, C, h, w) and DINOv2 guidance for uint8/float (3, H, W) images."""
        images = [im.to(self.device) for im in images]
        clip_in = normalize_pad_resize(
            images, self.clip_pixel_mean, self.clip_pixel_std, self.size_divisibility, self.clip_resolution
        )
        dense, _ = encode_image_dense(self.clip_model, clip_in)
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
            tensors = self.vocab_tensors(self.test_vocab)  # fp32, outside autocast (it is cached)
            with autocast_context(self.device, self.inference_amp):
                clip_feats, dino_feats = self.extract_features(images)
                # the stage-1 logits are a training signal only: their decoder is skipped here
                _, logits, _ = self.head(clip_feats, dino_feats, tensors, decode_part_obj=False)
        return self._postprocess(batched_inputs, logits.float())

    def _train_lookup(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train_maps is None or self._train_maps[0].device != self.device:
            from ..vocab import label_maps

            maps = label_maps(self.train_vocab, self.train_obj_classes, self.ignore_label)
            self._train_maps = (
                torch.as_tensor(maps.text_to_part_map, dtype=torch.long, device=self.device),
                torch.as_tensor(maps.obj_to_obj_in_part_map, dtype=torch.long, device=self.device),
            )
        return self._train_maps

    def _losses(self, batched_inputs, clip_feats, dino_feats) -> dict[str, torch.Tensor]:
        tensors = self.vocab_tensors(self.train_vocab)
        part_obj, specific, costs = self.head(clip_feats, dino_feats, tensors)
        targets = torch.stack([x["obj_part_sem_seg"] for x in batched_inputs]).to(self.device).long()
        obj_targets = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device).long()
        text_to_part, obj_to_obj_in_part = self._train_lookup()
        terms = partcatseg_losses(
            part_obj, specific, costs, targets, obj_targets,
            text_to_part=text_to_part,
            obj_to_obj_in_part=obj_to_obj_in_part,
            class_to_object=tensors.class_to_object,
            num_parts=len(self.train_vocab.part_classes),
            num_objects=len(self.train_vocab.object_classes),
            ignore_value=self.ignore_value,
            ignore_label=self.ignore_label,
            bg_on=self.bg_on,
        )
        self.last_loss_terms = {k: v for k, v in terms.items() if k.startswith("term_")}
        return {"loss_sem_seg": terms["loss_sem_seg"]}

    def object_index(self, record: dict) -> Optional[int]:
        """The Oracle-Obj object id of a record: ``object_class``, else detectron2 ``instances``."""
        if record.get("object_class") is not None:
            return int(record["object_class"])
        instances = record.get("instances")
        if instances is not None and hasattr(instances, "gt_classes") and len(instances.gt_classes):
            return int(instances.gt_classes[0])
        return None

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
            obj = self.object_index(record)
            if obj is not None:
                # Oracle-Obj: classes whose name lacks the object's name (substring rule) score -1
                allowed = oracle_class_mask(self.test_vocab.classes, self.test_obj_classes[obj])
                dropped = [i for i, keep in enumerate(allowed) if not keep]
                parts = parts.clone()
                parts[dropped] = -1.0
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
