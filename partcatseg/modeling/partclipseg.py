"""PartCLIPSeg meta-architecture (Choi et al., NeurIPS 2024; official code kaist-cvml/part-clipseg).

CLIPSeg (``transformers``) conditioned on generalized parts and objects, with an object-specific
head that combines the two, and attention-control losses. The network itself lives in
:mod:`partcatseg.modeling.clipseg` (:class:`PartCLIPSegNet`), the losses in
:mod:`partcatseg.modeling.partclipseg_losses`; this module turns detectron2-style records into
network inputs and outputs back into per-record scores.

Inputs and outputs follow the framework's model protocol (a list of per-image dicts):

* training: ``image`` (uint8 CHW in ``input_format`` order), ``sem_seg`` (object ids of the training
  object list), ``obj_part_sem_seg`` (object-specific part ids of the training vocabulary) ->
  ``{"loss_sem_seg": total, "term_*": detached terms}``;
* inference: ``image``, ``height``, ``width`` and optionally ``file_name``, ``sem_seg`` /
  ``object_class`` -> per record ``{"sem_seg": (T, H, W) Oracle-Obj scores, "sem_seg_all":
  (T + 1, H, W) Pred-All scores, background last}``.

Official behaviour reproduced by default (flags offer the fixed behaviour where it is a plain bug):

* training feeds ``record["image"]`` to the RGB processor as it is — with the official configs that
  is detectron2's default BGR (``fix_train_color`` converts to RGB first);
* inference re-reads ``file_name`` with PIL (RGB, original size, no EXIF rotation) and ignores the
  mapper's resized image (``reread_test_image``);
* the decoder attention is read from layer ``attn_levels = (2,)`` only (the official ``attn_level``
  argument never reaches the model);
* the object-specific head's text side takes "the object's embedding" from condition
  ``obj_index`` instead of ``P + obj_index`` (``fix_object_text_index``; released weights were
  trained with the official lookup);
* the Gaussian of the attention loss has an effective sigma of ``sigma * sqrt(2)``
  (``fix_smoothing_sigma``) and the attention loss drops the largest object id of every image
  (``fix_attn_object_list``).
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..vocab import Vocabulary, dataset_ignore_label, label_maps, split_part_name
from . import config_map
from .clipseg import IMAGENET_MEAN, IMAGENET_STD, PartCLIPSegNet, clipseg_config, clipseg_pixel_values, clipseg_tokenize
from .partclipseg_losses import (
    attention_control_losses,
    build_part_targets,
    gaussian_kernel,
    merged_part_attention,
    partclipseg_bce_terms,
)
from .meta_arch import META_ARCH_REGISTRY, SegmentationModel, record_object_index
from .pretrained import PretrainedComponent, fill_pretrained
from .speed import autocast_context

__all__ = ["PartCLIPSeg", "OFFICIAL_TRAINABLE", "clipseg_dims_from_config"]

logger = logging.getLogger(__name__)

#: Official rule (``baselines/partclipseg.py``): parameters whose name contains one of these train.
OFFICIAL_TRAINABLE = ("visual_adapter", "clip.text_model.embeddings", "film", "decoder")


@META_ARCH_REGISTRY.register()
class PartCLIPSeg(SegmentationModel):
    """Open-vocabulary part segmentation with CLIPSeg (Choi et al., NeurIPS 2024).

    Args:
        network: the :class:`PartCLIPSegNet` (registered as ``partclipseg_model``, the official key).
        train_vocabulary / test_vocabulary: object-specific part vocabularies ("cat's head", ...);
            their ``objects`` are what training ``sem_seg`` ids and inference ``sem_seg`` /
            ``object_class`` index.
        ignore_label: ignore id of the label maps (the test dataset's, as officially).
        input_format: channel order of ``record["image"]`` ("RGB" or "BGR", ``INPUT.FORMAT``).
        image_size, pixel_mean, pixel_std: the CLIPSeg processor (352, ImageNet mean/std in [0, 1]).
        obj_lambda, part_lambda: weights of the object and generalized-part BCE terms.
        use_attention: add the attention-control losses (separation, enhancement).
        attn_sep_lambda, attn_enh_lambda, attn_mask_threshold: their weights and threshold.
        attn_levels: decoder layers whose attention the losses read ((2,) officially, always).
        bg_weight: BCE weight of the background channels (0.05).
        smoothing_kernel_size, smoothing_sigma: the attention smoothing (3, 0.5).
        reread_test_image: at inference, decode ``record["file_name"]`` with PIL as the official code
            does (used only when the file's size equals the record's ``height``/``width``).
        oracle_fill_value: Oracle-Obj score of the classes of other objects (official: 0.0).
        fix_train_color, fix_object_text_index, fix_attn_object_list, fix_smoothing_sigma: replace
            an official bug by the evidently intended behaviour (all False = official).
        trainable: name fragments of trainable parameters (``None`` leaves ``requires_grad`` as is).
    """

    task = "part"

    def __init__(
        self,
        *,
        network: PartCLIPSegNet,
        train_vocabulary: Vocabulary,
        test_vocabulary: Vocabulary,
        ignore_label: int = 255,
        input_format: str = "BGR",
        image_size: int = 352,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        obj_lambda: float = 1.0,
        part_lambda: float = 1.0,
        use_attention: bool = True,
        attn_sep_lambda: float = 0.1,
        attn_enh_lambda: float = 0.01,
        attn_mask_threshold: float = 0.3,
        attn_levels: Sequence[int] = (2,),
        bg_weight: float = 0.05,
        smoothing_kernel_size: int = 3,
        smoothing_sigma: float = 0.5,
        reread_test_image: bool = True,
        oracle_fill_value: float = 0.0,
        fix_train_color: bool = False,
        fix_object_text_index: bool = False,
        fix_attn_object_list: bool = False,
        fix_smoothing_sigma: bool = False,
        trainable: Optional[Sequence[str]] = OFFICIAL_TRAINABLE,
        inference_amp: str = "",
        init_weights: str = "",
    ) -> None:
        super().__init__(train_vocabulary=train_vocabulary, test_vocabulary=test_vocabulary, input_format=input_format)
        num_decoder_layers = len(network.decoder.layers)
        bad = [lvl for lvl in attn_levels if not 0 <= int(lvl) < num_decoder_layers]
        if use_attention and (not attn_levels or bad):
            raise ValueError(f"attn_levels {list(attn_levels)} must index the {num_decoder_layers} decoder layers")
        self.partclipseg_model = network
        self.ignore_label = int(ignore_label)
        self.image_size = int(image_size)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.obj_lambda = float(obj_lambda)
        self.part_lambda = float(part_lambda)
        self.use_attention = bool(use_attention)
        self.attn_sep_lambda = float(attn_sep_lambda)
        self.attn_enh_lambda = float(attn_enh_lambda)
        self.attn_mask_threshold = float(attn_mask_threshold)
        self.attn_levels = tuple(int(v) for v in attn_levels)
        self.bg_weight = float(bg_weight)
        self.reread_test_image = bool(reread_test_image)
        self.oracle_fill_value = float(oracle_fill_value)
        self.fix_train_color = bool(fix_train_color)
        self.fix_object_text_index = bool(fix_object_text_index)
        self.fix_attn_object_list = bool(fix_attn_object_list)
        self.register_buffer(
            "smoothing_kernel",
            gaussian_kernel(smoothing_kernel_size, smoothing_sigma, official=not fix_smoothing_sigma),
            persistent=False,
        )
        self.init_weights = init_weights
        self._text_cache: dict[tuple, tuple[tuple, torch.Tensor]] = {}
        autocast_context(network.non_object_embedding.device, inference_amp)  # validates the mode now
        self.inference_amp = inference_amp  # TEST.AMP: "" = fp32, "bf16"/"fp16" = autocast the network
        self._train_maps: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if trainable is not None:
            set_partclipseg_trainable(network, trainable)

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.partclipseg_model.non_object_embedding.device

    @property
    def network(self) -> PartCLIPSegNet:
        return self.partclipseg_model

    # ----------------------------------------------------------------- construction from a config
    @classmethod
    def from_config(cls, cfg: Any) -> dict:
        """Constructor kwargs from a config: ``PartCLIPSeg(**PartCLIPSeg.from_config(cfg))``.

        This is the one place where YAML keys become PartCLIPSeg arguments.
        """
        p = cfg.MODEL.PARTCLIPSEG
        vocabularies = config_map.vocabularies_from_config(cfg)
        eval_set = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else cfg.DATASETS.TRAIN[0]
        return dict(
            network=PartCLIPSegNet(clipseg_config(**clipseg_dims_from_config(cfg))),
            **vocabularies,
            # officially the test dataset's ignore id (255 Pascal, 65535 ADE); your own datasets: IGNORE_VALUE
            ignore_label=dataset_ignore_label(eval_set, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
            image_size=p.INPUT_SIZE,
            obj_lambda=p.OBJ_LAMBDA,
            part_lambda=p.PART_LAMBDA,
            use_attention=p.USE_ATTENTION,
            attn_sep_lambda=p.ATTN_SEP_LAMBDA,
            attn_enh_lambda=p.ATTN_ENH_LAMBDA,
            attn_mask_threshold=p.ATTN_MASK_THRESHOLD,
            attn_levels=(2,),  # the official attn_level; no config key reaches it
            reread_test_image=p.REREAD_TEST_IMAGE,
            fix_train_color=p.FIX_TRAIN_COLOR,
            fix_object_text_index=p.FIX_OBJECT_TEXT_INDEX,
            fix_attn_object_list=p.FIX_ATTN_OBJECT_LIST,
            fix_smoothing_sigma=p.FIX_SMOOTHING_SIGMA,
            trainable=tuple(p.TRAINABLE),
            init_weights=("" if p.ARCH == "tiny" else "clipseg_rd64_refined") if p.INIT_WEIGHTS == "auto" else p.INIT_WEIGHTS,
            **config_map.config_values(cfg, config_map.MODEL_KEYS, "input_format", "inference_amp"),
        )

    # ----------------------------------------------------------------- vocabulary
    def prepare_vocabulary(self, vocabulary: Optional[Vocabulary] = None, *, refresh: bool = False) -> None:
        if refresh:
            self._text_cache.clear()
        self.text_conditions(self._check_vocabulary(vocabulary) if vocabulary is not None else self.vocabulary)

    def load_pretrained(self, missing=None) -> list[str]:
        """CLIPSeg rd64-refined (``init_weights``) for a network the checkpoint did not provide (official init)."""
        component = PretrainedComponent("partclipseg_model.", self.partclipseg_model, self.init_weights,
                                        _load_clipseg_file)
        return fill_pretrained(self, [component], missing)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "conditions": self.vocabulary.num_text_classes_stage1,
                "image_size": self.image_size, "inference_amp": self.inference_amp or "fp32"}

    def profile_stages(self) -> dict[str, list[tuple[Any, str]]]:
        # the text conditions are cached after the first call
        net = self.partclipseg_model
        return {"text conditions": [(self, "text_conditions")], "image encoder": [(net, "visual_activations")],
                "decoder": [(net.decoder, "forward")]}

    @staticmethod
    def prompts(vocab: Vocabulary) -> list[str]:
        """The text prompts: generalized parts then objects, bare names (no template)."""
        return [name.replace("'s", "") for name in list(vocab.part_classes) + list(vocab.object_classes)]

    def _text_key(self) -> tuple:
        params = self.partclipseg_model.text_parameters()
        return (str(self.device), tuple((id(p), p.data_ptr(), p._version) for p in params))

    def text_conditions(self, vocab: Vocabulary) -> torch.Tensor:
        """Decoder conditions (P + O + 1, D) of ``vocab``: parts, objects, background.

        Computed with gradients when training a text parameter (the official recipe trains the token
        and position embeddings); otherwise computed once and cached in memory per vocabulary,
        recomputed after the text weights change (load, optimizer step, device move).
        """
        net = self.partclipseg_model
        names = tuple(self.prompts(vocab))
        if self.training and torch.is_grad_enabled() and any(p.requires_grad for p in net.text_parameters()):
            return self._encode_conditions(names)
        key = self._text_key()
        cached = self._text_cache.get(names)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            conditions = self._encode_conditions(names)
        self._text_cache[names] = (key, conditions)
        return conditions

    def _encode_conditions(self, names: Sequence[str]) -> torch.Tensor:
        net = self.partclipseg_model
        ids, mask = clipseg_tokenize(names)
        return net.conditional_embeddings(net.encode_text(ids.to(self.device), mask.to(self.device)))

    def _index_maps(self, vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
        part_index = torch.as_tensor(vocab.class_to_part, dtype=torch.long, device=self.device)
        obj_index = torch.as_tensor(vocab.class_to_object, dtype=torch.long, device=self.device)
        return part_index, obj_index

    def _object_text_offset(self, vocab: Vocabulary) -> int:
        return len(vocab.part_classes) if self.fix_object_text_index else 0

    # ----------------------------------------------------------------- images
    def _to_rgb(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(0) if self.input_format == "BGR" else image

    def _train_image(self, record: dict):
        image = record["image"]
        return self._to_rgb(image) if self.fix_train_color else image  # official: as given (BGR)

    def _test_image(self, record: dict):
        """What the official inference encodes: the file re-read with PIL, else ``record["image"]``."""
        file_name = record.get("file_name")
        if self.reread_test_image and file_name:
            try:
                with Image.open(file_name) as f:
                    image = f.convert("RGB")
            except OSError as e:
                logger.warning("PartCLIPSeg: cannot re-read %s (%s); using record['image']", file_name, e)
            else:
                size = (int(record.get("height", image.height)), int(record.get("width", image.width)))
                if size == (image.height, image.width):
                    return image
        return self._to_rgb(record["image"])

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        return clipseg_pixel_values(images, self.image_size, self.pixel_mean, self.pixel_std, device=self.device)

    # ----------------------------------------------------------------- forward
    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        with torch.no_grad():
            return self.inference(batched_inputs)

    def run_network(self, pixel_values: torch.Tensor, vocab: Vocabulary, attention: bool = False):
        """Both heads (and, if ``attention``, the decoder attention of ``attn_levels``) for ``vocab``."""
        conditions = self.text_conditions(vocab)
        part_index, obj_index = self._index_maps(vocab)
        return self.partclipseg_model(
            pixel_values, conditions, part_index, obj_index, len(vocab.part_classes),
            attention_layers=self.attn_levels if attention else (),
            object_text_offset=self._object_text_offset(vocab),
        )

    def _train_lookup(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train_maps is None or self._train_maps[0].device != self.device:
            maps = label_maps(self.train_vocabulary, self.ignore_label)
            self._train_maps = (
                torch.as_tensor(maps.text_to_part_map, dtype=torch.long, device=self.device),
                torch.as_tensor(maps.obj_to_obj_in_part_map, dtype=torch.long, device=self.device),
            )
        return self._train_maps

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """Training losses: ``loss_sem_seg`` (with gradient) and the detached ``term_*`` values."""
        vocab = self.train_vocabulary
        pixel_values = self.pixel_values([self._train_image(x) for x in batched_inputs])
        out = self.run_network(pixel_values, vocab, attention=self.use_attention)
        num_parts, num_objects = len(vocab.part_classes), len(vocab.object_classes)
        text_to_part, obj_to_obj_in_part = self._train_lookup()
        targets = build_part_targets(
            [x["obj_part_sem_seg"] for x in batched_inputs],
            [x["sem_seg"] for x in batched_inputs],
            tuple(out.logits.shape[-2:]),
            text_to_part, obj_to_obj_in_part, num_parts, num_objects, len(vocab), self.ignore_label,
        )
        terms = partclipseg_bce_terms(out.logits, out.part_obj_logits, targets, num_parts, self.bg_weight)
        part_obj = terms["part_obj_fg"] + terms["part_obj_bg"]
        loss = part_obj + self.obj_lambda * terms["obj"] + self.part_lambda * terms["part"]
        sep: Any = 0.0
        enh: Any = 0.0
        if self.use_attention:
            part_index, obj_index = self._index_maps(vocab)

            def part_attention(b: int, classes: list) -> torch.Tensor:
                return merged_part_attention(out.attentions, self.attn_levels, b, classes, part_index, obj_index,
                                             num_parts)

            sep, enh = attention_control_losses(
                part_attention, targets, len(batched_inputs), self.attn_mask_threshold, self.smoothing_kernel,
                fix_object_list=self.fix_attn_object_list,
            )
            loss = loss + (self.attn_sep_lambda * sep + self.attn_enh_lambda * enh)
        if not torch.isfinite(loss):
            loss = torch.nan_to_num(loss)  # official: a NaN/inf batch contributes 0

        def scalar(v) -> torch.Tensor:
            return v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=self.device)

        return {
            "loss_sem_seg": loss,
            "term_part_obj": scalar(part_obj),
            "term_part_obj_fg": scalar(terms["part_obj_fg"]),
            "term_part_obj_bg": scalar(terms["part_obj_bg"]),
            "term_part": scalar(terms["part"]),
            "term_obj": scalar(terms["obj"]),
            "term_sep": scalar(sep),
            "term_enh": scalar(enh),
        }

    # ----------------------------------------------------------------- inference
    def oracle_objects(self, record: dict) -> Optional[list[str]]:
        """Objects whose classes Oracle-Obj keeps; ``None`` keeps every class.

        Official rule (``partclipseg.py`` inference): the objects present in the record's object map
        ``sem_seg`` (ids into the test object list, ignore label excluded), and a class is kept iff
        its object name (the text before "'s") *equals* one of them. Records without ``sem_seg`` fall
        back to the single object ``object_class`` (or ``instances.gt_classes[0]``); records with
        neither are not masked. On the object-conditioned test sets both give the same object.
        """
        objects = self.vocabulary.objects
        sem_seg = record.get("sem_seg")
        if sem_seg is not None:
            ids = torch.unique(torch.as_tensor(sem_seg)).tolist()
            return [objects[int(i)] for i in ids if int(i) != self.ignore_label and 0 <= int(i) < len(objects)]
        obj = record_object_index(record)
        if obj is not None and 0 <= obj < len(objects):
            return [objects[obj]]
        return None

    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        """Per-record Oracle-Obj and Pred-All scores at the record's ``height`` x ``width``.

        ``sem_seg`` (T, H, W): sigmoid of the bilinearly upsampled object-specific logits, with the
        classes of objects other than :meth:`oracle_objects` set to ``oracle_fill_value`` (0.0).
        ``sem_seg_all`` (T + 1, H, W): the same scores with background, each gated by the object
        head: a class keeps its score only where its object wins the argmax over the sigmoid object
        + background scores (the background only where the background wins), 0 elsewhere — so an
        ``argmax`` over it is the official ``pred_all`` prediction.
        """
        vocab = self.vocabulary
        images = [self._test_image(x) for x in batched_inputs]
        self.text_conditions(vocab)  # fp32 and cached, outside autocast
        with autocast_context(self.device, self.inference_amp):
            out = self.run_network(self.pixel_values(images), vocab)
        _, obj_index = self._index_maps(vocab)
        num_parts = len(vocab.part_classes)
        results = []
        for i, record in enumerate(batched_inputs):
            height = int(record.get("height", record["image"].shape[-2]))
            width = int(record.get("width", record["image"].shape[-1]))
            scores = torch.sigmoid(F.interpolate(out.part_obj_logits[i : i + 1].float(), size=(height, width),
                                                 mode="bilinear", align_corners=False))[0]
            object_scores = torch.sigmoid(F.interpolate(out.logits[i : i + 1, num_parts:].float(),
                                                        size=(height, width), mode="bilinear", align_corners=False))[0]
            # each class keeps its score where its object (the background: where it) wins the argmax;
            # compared per class against the argmax map, no (T, H, W) one-hot copy is built
            winner = object_scores.argmax(0)
            gated = scores.clone()
            gated[:-1].masked_fill_(winner.unsqueeze(0) != obj_index.view(-1, 1, 1), 0.0)
            gated[-1].masked_fill_(winner != object_scores.shape[0] - 1, 0.0)
            oracle = scores[:-1].clone()
            objects = self.oracle_objects(record)
            if objects is not None:
                keep = torch.tensor([split_part_name(n)[0] in objects for n in vocab.classes], device=oracle.device)
                oracle[~keep] = self.oracle_fill_value
            results.append({"sem_seg": oracle, "sem_seg_all": gated})
        return results


def _load_clipseg_file(network: PartCLIPSegNet, path: str) -> None:
    """A ``CLIPSegForImageSegmentation`` state dict file (``.bin`` / ``.safetensors``) into the network."""
    from ..checkpoint import load_safetensors, read_checkpoint_file

    state = load_safetensors(path) if path.endswith(".safetensors") else read_checkpoint_file(path)["model"]
    missing, _ = network.load_clipseg_weights(state)
    logger.info("CLIPSeg weights from %s; kept at their initialisation: %d entries (the PartCLIPSeg additions)",
                path, len(missing))


def set_partclipseg_trainable(network: nn.Module, fragments: Sequence[str]) -> None:
    """``requires_grad`` = the parameter name contains one of ``fragments`` (official rule)."""
    for name, param in network.named_parameters():
        param.requires_grad_(any(f in name for f in fragments))


def clipseg_dims_from_config(cfg: Any) -> dict:
    """:func:`clipseg_config` arguments: the official recipe, or ``MODEL.TINY_CLIPSEG`` for "tiny"."""
    arch = cfg.MODEL.PARTCLIPSEG.ARCH
    if arch in ("", "clipseg-rd64-refined"):
        return {}
    if arch != "tiny":
        raise ValueError(f"MODEL.PARTCLIPSEG.ARCH={arch!r}: expected '' (clipseg-rd64-refined) or 'tiny'")
    t = cfg.MODEL.TINY_CLIPSEG
    return dict(
        text_width=t.TEXT_WIDTH, text_layers=t.TEXT_LAYERS, text_heads=t.TEXT_HEADS,
        text_intermediate=t.TEXT_INTERMEDIATE, vision_width=t.VISION_WIDTH, vision_layers=t.VISION_LAYERS,
        vision_heads=t.VISION_HEADS, vision_intermediate=t.VISION_INTERMEDIATE, image_size=t.IMAGE_SIZE,
        patch_size=t.PATCH_SIZE, projection_dim=t.PROJECTION_DIM, extract_layers=tuple(t.EXTRACT_LAYERS),
        reduce_dim=t.REDUCE_DIM, decoder_heads=t.DECODER_HEADS, decoder_intermediate=t.DECODER_INTERMEDIATE,
    )
