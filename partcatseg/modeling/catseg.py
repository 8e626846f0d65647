"""CAT-Seg meta-architectures: the CVPR-2024 model and part-catseg's CAT-Seg baseline.

* :class:`CATSeg` — CAT-Seg (Cho et al., CVPR 2024): CLIP only.  The fine-tuned CLIP text tower encodes
  the vocabulary inside ``forward`` (one template, first synonym); dense CLIP features give the cost
  volume and, through two intermediate ViT blocks and ``upsample1``/``upsample2``, the decoder guidance.
* :class:`CATSegBaseline` — the pre-CVPR CAT-Seg that part-catseg trains as its baseline: frozen CLIP
  with fused attention weights, 80-template frozen text features, DINOv2 guidance, a background class
  and Oracle-Obj inference.

Both follow the model protocol (:mod:`partcatseg.modeling.meta_arch`) and keep the official module
tree (``sem_seg_head.predictor.{clip_model, transformer}``) so released checkpoints load unchanged.
Only their ``from_config`` classmethods read a config.
"""
from __future__ import annotations

import abc

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..vocab import Vocabulary, load_class_json
from . import config_map
from .catseg_aggregator import CATSegAggregator
from .clip import encode_image_dense, split_qkv_projections
from .meta_arch import META_ARCH_REGISTRY, SegmentationModel, oracle_scores, record_object_index
from .partcatseg import set_clip_trainable
from .preprocess import normalize_pad_resize, resize_to_output
from .pretrained import clip_and_dinov2, fill_pretrained
from .resnet import ResNetBackbone
from .speed import apply_channels_last, autocast_context, compile_modules
from .text import TextFeatureCache, encode_class_names, forget_text_fingerprint

__all__ = [
    "CATSeg",
    "CATSegBaseline",
    "CATSegHead",
    "CATSegPredictor",
    "CATSEG_SINGLE_TEMPLATE",
    "catseg_loss",
    "set_catseg_clip_trainable",
    "sliding_window_inference",
]


CATSEG_SINGLE_TEMPLATE = "A photo of a {} in the scene"
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)  # OpenAI CLIP mean x 255, RGB
CLIP_STD = (68.5005327, 66.6321579, 70.3231630)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


# ------------------------------------------------------------------------------------ module tree
class CATSegPredictor(nn.Module):
    """CLIP, the optional background embedding and the aggregator, under the official key names."""

    def __init__(self, clip_model: nn.Module, transformer: CATSegAggregator, bg_on: bool = False) -> None:
        super().__init__()
        self.bg_on = bg_on
        if bg_on:
            # Official: created after CLIP, normal(0, text_width^-0.5); never trained (see CATSegBaseline).
            dim = clip_model.text_projection.shape[-1]
            self.non_object_embedding = nn.Parameter(torch.empty(1, dim))
            nn.init.normal_(self.non_object_embedding, std=clip_model.transformer.width**-0.5)
        self.clip_model = clip_model
        self.transformer = transformer


class CATSegHead(nn.Module):
    """Parameter-free level of the official module tree (``sem_seg_head.predictor.*``)."""

    def __init__(self, predictor: CATSegPredictor, ignore_value: int = 255) -> None:
        super().__init__()
        self.predictor = predictor
        self.ignore_value = ignore_value


# ------------------------------------------------------------------------------------ shared pieces
def set_catseg_clip_trainable(clip_model: nn.Module, mode: str) -> None:
    """CAT-Seg CVPR's ``CLIP_FINETUNE`` rule (both towers; only names containing "transformer").

    "attention": attention tensors train only if named ``q_proj``/``v_proj`` (so ``k_proj_weight``, the
    fused ``in_proj_bias`` and ``out_proj`` stay frozen); other "transformer" names train only if they
    contain "position" (none do in CLIP).  "full": everything under "transformer".  "prompt": names
    containing "prompt".  Anything else freezes CLIP.
    """
    for name, param in clip_model.named_parameters():
        trainable = False
        if "transformer" in name:
            if mode == "attention":
                trainable = ("q_proj" in name or "v_proj" in name) if "attn" in name else "position" in name
            elif mode == "full":
                trainable = True
            elif mode == "prompt":
                trainable = "prompt" in name
        param.requires_grad_(trainable)


def catseg_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_value: int,
    *,
    bg_on: bool = False,
    bg_weight: float = 0.05,
) -> torch.Tensor:
    """Sigmoid BCE over every pixel x class, as both official CAT-Seg generations train.

    ``logits`` (B, T, h, w) are upsampled (bilinear) to the (B, H, W) ``targets``.  Labelled pixels get a
    one-hot row; ignored pixels stay in the mean as all-negative rows.  With ``bg_on`` the last channel
    is a background class whose target is 1 wherever no label was written (ignored pixels included)
    and whose BCE term is weighted ``bg_weight``; the mean is still over all B*H*W*T terms.
    """
    logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    logits = logits.permute(0, 2, 3, 1)
    num_classes = logits.shape[-1]
    targets = targets.to(logits.device).long()
    mask = targets != ignore_value
    labels = targets[mask]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"training labels must lie in [0, {num_classes}) or equal ignore_value={ignore_value}; "
            f"found values {labels.min().item()}..{labels.max().item()}"
        )
    dense_targets = torch.zeros_like(logits)
    weight = None
    if bg_on:
        dense_targets[..., -1] = 1.0
        weight = torch.ones(num_classes, device=logits.device, dtype=logits.dtype)
        weight[-1] = bg_weight
    dense_targets[mask] = F.one_hot(labels, num_classes).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, dense_targets, weight=weight)


def sliding_window_inference(
    image: torch.Tensor,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    kernel: int = 384,
    overlap: float = 0.333,
    out_res: tuple[int, int] = (640, 640),
) -> torch.Tensor:
    """CAT-Seg's official test-time procedure for one image; returns (T, *out_res) probabilities.

    The image is squashed to ``out_res``, cut into ``kernel`` crops with stride
    ``int(kernel * (1 - overlap))`` (4 crops at the defaults) and run together with a global view (the
    whole image squashed to ``kernel``).  Logits are upsampled to ``kernel`` *before* the sigmoid, crops
    are fold-averaged, and the result is the mean of the crop map and the upsampled global map.

    Args:
        image: (3, H, W) image in 0-255 (uint8 or float).
        logits_fn: maps a (N, 3, kernel, kernel) float 0-255 batch to (N, T, h, w) logits.
    """
    stride = int(kernel * (1 - overlap))
    out_res = tuple(out_res)
    x = image.float()[None]
    big = F.interpolate(x, size=out_res, mode="bilinear", align_corners=False)
    cols = F.unfold(big, kernel_size=kernel, stride=stride)  # 1, 3*k*k, L (row-major windows)
    num_windows = cols.shape[-1]
    crops = cols[0].transpose(0, 1).reshape(num_windows, 3, kernel, kernel)
    global_view = F.interpolate(x, size=(kernel, kernel), mode="bilinear", align_corners=False)
    logits = logits_fn(torch.cat([crops, global_view], dim=0))
    probs = F.interpolate(logits, size=(kernel, kernel), mode="bilinear", align_corners=False).sigmoid()
    global_probs = F.interpolate(probs[-1:], size=out_res, mode="bilinear", align_corners=False)
    num_classes = probs.shape[1]
    crop_cols = probs[:-1].reshape(num_windows, num_classes * kernel * kernel).transpose(0, 1)[None]
    summed = F.fold(crop_cols, out_res, kernel_size=kernel, stride=stride)
    ones = torch.ones((1, 1, *out_res), device=probs.device, dtype=probs.dtype)
    count = F.fold(F.unfold(ones, kernel_size=kernel, stride=stride), out_res, kernel_size=kernel, stride=stride)
    return ((summed / count + global_probs) / 2)[0]


def _output_size(record: dict) -> tuple[int, int]:
    """The record's ``height``/``width`` (original image size), else the input tensor's size."""
    image = record["image"]
    return int(record.get("height", image.shape[-2])), int(record.get("width", image.shape[-1]))


def _tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + h*w, C) ViT tokens -> (B, C, h, w) patch map (CLS dropped, square grid)."""
    b, n, c = tokens.shape
    side = int(round((n - 1) ** 0.5))
    if side * side != n - 1:
        raise ValueError(f"expected 1 + a square number of tokens, got {n}")
    return tokens[:, 1:].transpose(1, 2).reshape(b, c, side, side)


class _CATSegCommon(SegmentationModel):
    """Buffers, properties, speed modes and the inference loop both meta-architectures share."""

    sem_seg_head: CATSegHead

    def __init__(
        self,
        *,
        train_vocabulary: Vocabulary,
        test_vocabulary: Vocabulary,
        templates: Sequence[str],
        clip_resolution: tuple[int, int],
        ignore_value: int,
        size_divisibility: int,
        sliding_window: bool,
        clip_pixel_mean: Sequence[float],
        clip_pixel_std: Sequence[float],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        text_cache: Optional[TextFeatureCache],
        input_format: str,
        inference_amp: str,
        pretrained_weights: Optional[dict[str, str]],
    ) -> None:
        super().__init__(train_vocabulary=train_vocabulary, test_vocabulary=test_vocabulary, input_format=input_format)
        self.pretrained_weights = dict(pretrained_weights or {})
        # Non-persistent, as officially: they are not checkpoint keys.
        self.register_buffer("clip_pixel_mean", torch.tensor(clip_pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("clip_pixel_std", torch.tensor(clip_pixel_std).view(-1, 1, 1), False)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.templates = list(templates)
        self.clip_resolution = tuple(clip_resolution)
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        self.sliding_window = sliding_window
        self.text_cache = text_cache or TextFeatureCache(None)
        autocast_context(self.clip_pixel_mean.device, inference_amp)  # validates the mode now
        self.inference_amp = inference_amp

    def load_pretrained(self, missing=None) -> list[str]:
        backbone = getattr(self, "backbone", None)  # CAT-Seg CVPR has no guidance backbone
        return fill_pretrained(self, clip_and_dinov2(self.clip_model, backbone, self.pretrained_weights), missing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the CLIP blocks (both towers, where trained), a DINOv2 guidance backbone's blocks and
        the aggregator's steps in training (a ResNet guidance backbone is not checkpointed)."""
        self.grad_checkpointing = bool(enable)
        self.aggregator.set_grad_checkpointing(enable)
        backbone = getattr(self, "backbone", None)
        if hasattr(backbone, "set_grad_checkpointing"):
            backbone.set_grad_checkpointing(enable)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "templates": len(self.templates), "class_chunk": self.aggregator.class_chunk,
                "inference_amp": self.inference_amp or "fp32"}

    def profile_stages(self) -> dict[str, list[tuple[Any, str]]]:
        return {"image encoders": [(self, "extract_features")], **self.aggregator.profile_stages()}

    def _apply_speed_modes(self, channels_last: bool, compile: bool) -> None:
        """The opt-in speed modes, once every module exists (end of the constructor)."""
        if channels_last:
            apply_channels_last(self)
        if compile:
            compile_modules([self.aggregator, getattr(self, "backbone", None), self.clip_model.visual])

    @property
    def device(self) -> torch.device:
        return self.clip_pixel_mean.device

    @property
    def clip_model(self) -> nn.Module:
        return self.sem_seg_head.predictor.clip_model

    @property
    def aggregator(self) -> CATSegAggregator:
        return self.sem_seg_head.predictor.transformer

    def _clip_input(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        return normalize_pad_resize(
            images, self.clip_pixel_mean, self.clip_pixel_std, self.size_divisibility, self.clip_resolution
        )

    @abc.abstractmethod
    def text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """(T, P, C) text features of ``class_names`` (plus a background row where the model has one)."""

    @abc.abstractmethod
    def predict_logits(self, images: Sequence[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """(B, T, 4h, 4w) logits for (3, H, W) 0-255 images and (T, P, C) text features."""

    def prepare_vocabulary(self, vocabulary: Optional[Vocabulary] = None, *, refresh: bool = False) -> None:
        if refresh:
            self.text_cache.clear_memory()
            forget_text_fingerprint(self.clip_model)
        vocabulary = self._check_vocabulary(vocabulary) if vocabulary is not None else self.vocabulary
        with torch.no_grad():
            self.text_features(vocabulary.classes)

    def _probabilities(self, batched_inputs: list[dict], text: torch.Tensor) -> list[torch.Tensor]:
        """Per-record (T, height, width) probabilities (whole-image or sliding-window), fp32.

        Image encoders and aggregator run under ``TEST.AMP`` autocast; ``text`` was computed before.
        """
        with autocast_context(self.device, self.inference_amp):
            images = [x["image"].to(self.device) for x in batched_inputs]
            if self.sliding_window:
                out = []
                for record, image in zip(batched_inputs, images):
                    probs = sliding_window_inference(image, lambda views: self.predict_logits(list(views), text).float())
                    out.append(resize_to_output(probs, *_output_size(record)))
                return out
            probs = self.predict_logits(images, text).float().sigmoid()
            return [resize_to_output(p, *_output_size(r)) for r, p in zip(batched_inputs, probs)]


# ------------------------------------------------------------------------------------ CVPR 2024
@META_ARCH_REGISTRY.register()
class CATSeg(_CATSegCommon):
    """CAT-Seg, CVPR-2024 release (checkpoints ``model_base.pth``, ``model_large.pth``): semantic segmentation.

    ``MODEL.META_ARCHITECTURE: CATSeg`` also names part-catseg's baseline (:class:`CATSegBaseline`);
    :func:`partcatseg.config.resolve_meta_architecture` tells them apart.

    Args:
        clip_model: open_clip CLIP with split q/k/v weights (:func:`~.clip.split_qkv_projections`).
        aggregator: :class:`CATSegAggregator` with ``prompt_channel == len(templates)``.
        train_vocabulary / test_vocabulary: class names ("a, b" = synonyms; the first is used).
        templates: prompt templates (officially the single ``CATSEG_SINGLE_TEMPLATE``).
        guidance_layers: CLIP blocks whose residual stream guides the decoder ((3, 7) for ViT-B/16,
            (7, 15) for ViT-L/14@336px).
        clip_resolution: CLIP input size (384 for ViT-B/16, 336 otherwise).
        clip_finetune: ``CLIP_FINETUNE`` mode (see :func:`set_catseg_clip_trainable`).
        sliding_window: use the official sliding-window inference (``TEST.SLIDING_WINDOW``).
        grad_checkpointing: activation checkpointing in training (:meth:`set_grad_checkpointing`).
        text_cache: cache for evaluation text features (keyed by vocabulary and text-tower weights).
    """

    task = "semantic"

    def __init__(
        self,
        *,
        clip_model: nn.Module,
        aggregator: CATSegAggregator,
        train_vocabulary: Vocabulary,
        test_vocabulary: Vocabulary,
        templates: Sequence[str] = (CATSEG_SINGLE_TEMPLATE,),
        guidance_layers: Sequence[int] = (3, 7),
        clip_resolution: tuple[int, int] = (384, 384),
        clip_finetune: str = "attention",
        ignore_value: int = 255,
        size_divisibility: int = 32,
        sliding_window: bool = False,
        clip_pixel_mean: Sequence[float] = CLIP_MEAN,
        clip_pixel_std: Sequence[float] = CLIP_STD,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        text_cache: Optional[TextFeatureCache] = None,
        input_format: str = "RGB",
        inference_amp: str = "",
        channels_last: bool = False,
        compile: bool = False,
        pretrained_weights: Optional[dict[str, str]] = None,
        grad_checkpointing: bool = False,
    ) -> None:
        if len(guidance_layers) != 2 or list(guidance_layers) != sorted(guidance_layers):
            raise ValueError(f"guidance_layers={tuple(guidance_layers)}; expected two increasing block indices")
        num_blocks = len(clip_model.visual.transformer.resblocks)
        if guidance_layers[-1] >= num_blocks - 1:
            raise ValueError(
                f"guidance_layers={tuple(guidance_layers)} must index one of the first {num_blocks - 1} CLIP "
                f"blocks (the last block runs the dense value path)"
            )
        if aggregator.prompt_channel != len(templates):
            raise ValueError(
                f"{len(templates)} templates but the aggregator expects prompt_channel={aggregator.prompt_channel}"
            )
        # pixel_mean/std: official leftovers, unused by the CVPR forward (kept for API symmetry).
        super().__init__(
            train_vocabulary=train_vocabulary, test_vocabulary=test_vocabulary, templates=templates,
            clip_resolution=clip_resolution, ignore_value=ignore_value, size_divisibility=size_divisibility,
            sliding_window=sliding_window, clip_pixel_mean=clip_pixel_mean, clip_pixel_std=clip_pixel_std,
            pixel_mean=pixel_mean, pixel_std=pixel_std, text_cache=text_cache, input_format=input_format,
            inference_amp=inference_amp, pretrained_weights=pretrained_weights,
        )
        self.sem_seg_head = CATSegHead(CATSegPredictor(clip_model, aggregator), ignore_value)
        width = clip_model.visual.conv1.out_channels
        # Decoder guidance from two CLIP blocks, upsampled 2x and 4x (top-level official keys).
        self.upsample1 = nn.ConvTranspose2d(width, 256, kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(width, 128, kernel_size=4, stride=4)
        self.guidance_layers = tuple(guidance_layers)
        set_catseg_clip_trainable(clip_model, clip_finetune)
        self.set_grad_checkpointing(grad_checkpointing)
        self._apply_speed_modes(channels_last, compile)

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        head = cfg.MODEL.SEM_SEG_HEAD
        is_b16 = head.CLIP_PRETRAINED == "ViT-B/16"  # the official switch for resolution and hooked blocks
        clip_model = config_map.clip_from_config(cfg)
        split_qkv_projections(clip_model)
        embed_dim = clip_model.text_projection.shape[-1]
        config_map.check_head_dims(
            cfg,
            {"TEXT_GUIDANCE_DIM": embed_dim, "APPEARANCE_GUIDANCE_DIM": embed_dim, "DECODER_GUIDANCE_DIMS": [256, 128]},
            f"CAT-Seg (CVPR) with CLIP {head.CLIP_PRETRAINED!r} feeds its {embed_dim}-d dense CLIP features and "
            f"the 256/128-channel upsample1/upsample2 outputs to the aggregator",
        )
        templates = config_map.templates_from_config(cfg)
        return dict(
            clip_model=clip_model,
            aggregator=_aggregator_from_config(cfg, prompt_channel=len(templates), pad_len=256),
            train_vocabulary=_json_vocabulary(head.TRAIN_CLASS_JSON),
            test_vocabulary=_json_vocabulary(head.TEST_CLASS_JSON),
            templates=templates,
            guidance_layers=(3, 7) if is_b16 else (7, 15),
            clip_resolution=config_map.clip_resolution_from_config(cfg),
            clip_finetune=head.CLIP_FINETUNE,
            text_cache=config_map.text_cache_from_config(cfg),
            pretrained_weights=config_map.pretrained_from_config(cfg),
            **config_map.config_values(cfg, config_map.MODEL_KEYS, *_COMMON_ARGS),
        )

    def text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """(T, P, C) L2-normalised text features from the model's own (fine-tuned) text tower.

        With gradients while training a trainable text tower (the official behaviour: re-encoded every
        step); otherwise from the cache, keyed by the vocabulary and the current text weights, so a
        changed vocabulary or a further-trained tower is never served stale features.
        """
        trains_text = self.training and any(
            p.requires_grad for n, p in self.clip_model.named_parameters() if not n.startswith("visual.")
        )
        if trains_text:
            return encode_class_names(self.clip_model, class_names, self.templates, synonyms="first",
                                      grad_checkpointing=self.grad_checkpointing)
        return self.text_cache.get(self.clip_model, class_names, self.templates, synonyms="first")

    def extract_features(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Dense CLIP features (B, C, g, g) and the guidance maps [res3 (g), res4 (2g), res5 (4g)]."""
        clip_in = self._clip_input(images)
        dense, captured = encode_image_dense(
            self.clip_model, clip_in, cls_residual=True, capture_layers=self.guidance_layers,
            grad_checkpointing=self.grad_checkpointing and self.training,
        )
        res3 = _tokens_to_map(dense)
        res4 = self.upsample1(_tokens_to_map(captured[0]))
        res5 = self.upsample2(_tokens_to_map(captured[1]))
        return res3, [res3, res4, res5]

    def predict_logits(self, images: Sequence[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        images = [im.to(self.device) for im in images]
        img_feats, vis = self.extract_features(images)
        return self.aggregator(img_feats, text.unsqueeze(0).expand(len(images), -1, -1, -1), vis)

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            text = self.text_features(self.train_vocabulary.classes)
            logits = self.predict_logits([x["image"] for x in batched_inputs], text)
            targets = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device)
            return {"loss_sem_seg": catseg_loss(logits, targets, self.ignore_value)}
        with torch.no_grad():
            text = self.text_features(self.vocabulary.classes)
            return [{"sem_seg": p} for p in self._probabilities(batched_inputs, text)]


# ------------------------------------------------------------------------------------ part-catseg baseline
@META_ARCH_REGISTRY.register()
class CATSegBaseline(_CATSegCommon):
    """part-catseg's CAT-Seg baseline (pre-CVPR CAT-Seg + guidance backbone + background + Oracle-Obj).

    Args:
        backbone: guidance with an ``input_size`` attribute returning ``{res2, res3, res4}`` at 4x/2x/1x
            the CLIP grid: DINOv2 (``catseg_voc``) or a detectron2-layout ResNet (``catseg_ade``,
            ``catseg_partimagenet``, OV-PARTS).
        clip_model: open_clip CLIP with fused ``in_proj_weight`` (pre-CVPR layout).
        aggregator: :class:`CATSegAggregator` with ``pad_len=0`` and ``prompt_channel == len(templates)``.
        train_vocabulary / test_vocabulary: "object's part" vocabularies; the test vocabulary's
            ``objects`` are what a record's ``object_class`` indexes.
        templates: prompt templates (the 80 ImageNet ones officially), synonyms averaged.
        bg_on: append the background class (``non_object_embedding``) as the last class.
        clip_finetune: pre-CVPR rule (visual tower only, see ``partcatseg.set_clip_trainable``).
        finetune_backbone: train the backbone (official: ``SOLVER.BACKBONE_MULTIPLIER > 0``).
        grad_checkpointing: activation checkpointing in training (:meth:`set_grad_checkpointing`).
    """

    task = "part"

    def __init__(
        self,
        *,
        backbone: nn.Module,
        clip_model: nn.Module,
        aggregator: CATSegAggregator,
        train_vocabulary: Vocabulary,
        test_vocabulary: Vocabulary,
        templates: Sequence[str],
        bg_on: bool = True,
        bg_weight: float = 0.05,
        clip_finetune: str = "",
        finetune_backbone: bool = True,
        ignore_value: int = 255,
        size_divisibility: int = 32,
        clip_resolution: tuple[int, int] = (384, 384),
        sliding_window: bool = False,
        clip_pixel_mean: Sequence[float] = CLIP_MEAN,
        clip_pixel_std: Sequence[float] = CLIP_STD,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        text_cache: Optional[TextFeatureCache] = None,
        input_format: str = "RGB",
        inference_amp: str = "",
        channels_last: bool = False,
        compile: bool = False,
        pretrained_weights: Optional[dict[str, str]] = None,
        grad_checkpointing: bool = False,
    ) -> None:
        if aggregator.prompt_channel != len(templates):
            raise ValueError(
                f"{len(templates)} templates but the aggregator expects prompt_channel={aggregator.prompt_channel}"
            )
        super().__init__(
            train_vocabulary=train_vocabulary, test_vocabulary=test_vocabulary, templates=templates,
            clip_resolution=clip_resolution, ignore_value=ignore_value, size_divisibility=size_divisibility,
            sliding_window=sliding_window, clip_pixel_mean=clip_pixel_mean, clip_pixel_std=clip_pixel_std,
            pixel_mean=pixel_mean, pixel_std=pixel_std, text_cache=text_cache, input_format=input_format,
            inference_amp=inference_amp, pretrained_weights=pretrained_weights,
        )
        self.backbone = backbone
        self.sem_seg_head = CATSegHead(CATSegPredictor(clip_model, aggregator, bg_on), ignore_value)
        self.bg_on = bg_on
        self.bg_weight = bg_weight
        set_clip_trainable(clip_model, clip_finetune)
        backbone.requires_grad_(finetune_backbone)
        self.set_grad_checkpointing(grad_checkpointing)
        self._apply_speed_modes(channels_last, compile)

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        head = cfg.MODEL.SEM_SEG_HEAD
        clip_model = config_map.clip_from_config(cfg)
        embed_dim = clip_model.text_projection.shape[-1]
        if cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone":
            # OV-PARTS / pre-CVPR CAT-Seg guidance: detectron2 ResNet on the image squashed to 384x384
            res = cfg.MODEL.RESNETS
            backbone = ResNetBackbone(
                depth=res.DEPTH, out_features=tuple(res.OUT_FEATURES), stem_out_channels=res.STEM_OUT_CHANNELS,
                res2_out_channels=res.RES2_OUT_CHANNELS, stride_in_1x1=res.STRIDE_IN_1X1, input_size=384,
            )
            expected = {
                "TEXT_GUIDANCE_DIM": embed_dim,
                "APPEARANCE_GUIDANCE_DIM": backbone.channels["res4"],
                "DECODER_GUIDANCE_DIMS": [backbone.channels["res3"], backbone.channels["res2"]],
            }
            why = f"the CAT-Seg baseline feeds {embed_dim}-d CLIP text features and ResNet res4/res3/res2 maps"
        elif cfg.MODEL.BACKBONE.NAME == "DINOv2Backbone":
            backbone = config_map.dinov2_from_config(cfg)
            dino_dim = backbone.embed_dim
            expected = {
                "TEXT_GUIDANCE_DIM": embed_dim,
                "APPEARANCE_GUIDANCE_DIM": dino_dim,
                "DECODER_GUIDANCE_DIMS": [dino_dim, dino_dim],
            }
            why = f"the CAT-Seg baseline feeds {embed_dim}-d CLIP text features and {dino_dim}-d DINOv2 maps"
        else:
            raise ConfigError(
                f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} is not supported by the CAT-Seg baseline; "
                "expected 'DINOv2Backbone' or 'build_resnet_backbone'"
            )
        config_map.check_head_dims(cfg, expected, why + " to the aggregator")
        templates = config_map.templates_from_config(cfg)
        return dict(
            backbone=backbone,
            clip_model=clip_model,
            aggregator=_aggregator_from_config(cfg, prompt_channel=len(templates), pad_len=0),
            templates=templates,
            bg_on=head.BG_ON,
            clip_finetune=head.CLIP_FINETUNE,
            finetune_backbone=cfg.SOLVER.BACKBONE_MULTIPLIER > 0,
            clip_resolution=config_map.clip_resolution_from_config(cfg),
            text_cache=config_map.text_cache_from_config(cfg),
            pretrained_weights=config_map.pretrained_from_config(cfg),
            **config_map.vocabularies_from_config(cfg),
            **config_map.config_values(cfg, config_map.MODEL_KEYS, *_COMMON_ARGS),
        )

    def text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """Frozen (T [+1], P, C) features; the background row is the normalised ``non_object_embedding``.

        Officially the text features (background included) are computed once at construction, so the
        background vector is the parameter's init, never trained and equal to the checkpoint's value.
        """
        text = self.text_cache.get(self.clip_model, class_names, self.templates, synonyms="average")
        if not self.bg_on:
            return text
        bg = self.sem_seg_head.predictor.non_object_embedding.detach().to(text)
        bg = F.normalize(bg, dim=-1).unsqueeze(1).expand(1, text.shape[1], -1)
        return torch.cat([text, bg], dim=0)

    def extract_features(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Dense CLIP features (B, C, g, g) and the guidance backbone's maps [res4 (g), res3 (2g), res2 (4g)]."""
        ckpt = self.grad_checkpointing and self.training
        dense, _ = encode_image_dense(self.clip_model, self._clip_input(images), grad_checkpointing=ckpt)
        size = (self.backbone.input_size, self.backbone.input_size)
        dino = self.backbone(normalize_pad_resize(images, self.pixel_mean, self.pixel_std, self.size_divisibility, size))
        return _tokens_to_map(dense), [dino["res4"], dino["res3"], dino["res2"]]

    def predict_logits(self, images: Sequence[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        images = [im.to(self.device) for im in images]
        img_feats, vis = self.extract_features(images)
        return self.aggregator(img_feats, text.unsqueeze(0).expand(len(images), -1, -1, -1), vis)

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            text = self.text_features(self.train_vocabulary.classes)
            logits = self.predict_logits([x["image"] for x in batched_inputs], text)
            targets = torch.stack([x["obj_part_sem_seg"] for x in batched_inputs]).to(self.device)
            loss = catseg_loss(logits, targets, self.ignore_value, bg_on=self.bg_on, bg_weight=self.bg_weight)
            return {"loss_sem_seg": loss}
        with torch.no_grad():
            text = self.text_features(self.vocabulary.classes)
            results = []
            for record, prob in zip(batched_inputs, self._probabilities(batched_inputs, text)):
                parts = prob[:-1] if self.bg_on else prob
                parts = oracle_scores(parts, self.vocabulary, record_object_index(record))
                results.append({"sem_seg": parts, "sem_seg_all": prob})
            return results


# ------------------------------------------------------------------------------------ config helpers
# MODEL_KEYS arguments both CAT-Seg generations take.
_COMMON_ARGS = (
    "ignore_value", "size_divisibility", "sliding_window", "clip_pixel_mean", "clip_pixel_std", "pixel_mean",
    "pixel_std", "input_format", "inference_amp", "channels_last", "compile", "grad_checkpointing",
)


def _json_vocabulary(path_or_key: str) -> Vocabulary:
    """CAT-Seg CVPR reads its vocabularies from ``*_CLASS_JSON`` files (semantic names)."""
    return Vocabulary(load_class_json(path_or_key), name=path_or_key, parts=False)


def _aggregator_from_config(cfg: Any, prompt_channel: int, pad_len: int) -> CATSegAggregator:
    agg = config_map.aggregator_kwargs(cfg)
    return CATSegAggregator(
        **agg,
        attention_type=cfg.MODEL.SEM_SEG_HEAD.ATTENTION_TYPE,
        prompt_channel=prompt_channel,
        pad_len=pad_len,
        **config_map.inference_kwargs(cfg, agg),
    )
