"""The official PartCATSeg inference *procedure*, driving the official network code, for side-by-side timing.

The official repository cannot run here (detectron2, CUDA, downloads at construction).  Its network
files, however, only need torch/einops/timm: given a checkout of ``kaist-cvml/part-catseg``
(``--official-root``), this module imports

* ``baselines/modeling/transformer/part_cat_seg_model.py`` (the ``Aggregator``) and
* ``baselines/third_party/model_vpt.py`` (the vendored CLIP: ``build_model``, ``encode_text``,
  ``encode_image(x, dense=True)``)

by file path, loads *our* model's weights into them, and re-enacts what the detectron2 meta-arch and
predictor do around them:

* start-up: ``build_model`` on a state dict (fp16 cast, non-strict load); the four text tensors
  (train and test x part-object / object-specific) encoded class by class, one ``encode_text`` of
  all templates over the full 77-token context, no cache; ``Aggregator`` construction; the
  meta-arch's construction-time copies (``conv2 <- conv1``, ``layers_object``/``layers_specific_part
  <- layers``); then the checkpoint load (our weights, strict);
* per image (batch size 1): ``ImageList`` padding, CLIP squashed to its resolution, the dense CLIP
  path, DINOv2, the aggregator with ``return_cost=True``, the cost volumes moved to the CPU,
  Oracle-Obj masking by list indexing, two ``sem_seg_postprocess`` resizes, ``gc.collect()`` and
  ``torch.cuda.empty_cache()``.

Deviations, all forced by this machine and reported in :attr:`OfficialPartCATSeg.notes`:

* DINOv2 is our timm model with fused attention switched off (the torch.hub code's explicit softmax
  path; the hub itself needs the network).
* The tokenizer is ours (open_clip's copy of the same OpenAI BPE); the vendored one needs its
  vocabulary file, which is not part of the two official files.
* The official start-up text pass runs in fp16 on CUDA.  On CUDA we do the same; on the CPU it runs
  in fp32 on the exact weights (the official code has no CPU path: it calls ``.cuda()``).
* ``build_model`` derives the number of attention heads as ``width // 64``.  That holds for the
  real CLIPs (ViT-B/16: 12 visual, 8 text heads); for reduced test CLIPs with other head widths the
  official modules are given our head counts, otherwise the two models would not be the same network.

Nothing of the official code is shipped with this project.
"""
from __future__ import annotations

import copy
import gc
import importlib.util
import os
import sys
import time
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import record_object_index

__all__ = ["AGGREGATOR_FILE", "CLIP_FILE", "load_official_modules", "OfficialPartCATSeg"]

AGGREGATOR_FILE = os.path.join("baselines", "modeling", "transformer", "part_cat_seg_model.py")
CLIP_FILE = os.path.join("baselines", "third_party", "model_vpt.py")
# keys build_model() reads and deletes (OpenAI's TorchScript state dicts carry them)
_CLIP_META_KEYS = ("input_resolution", "context_length", "vocab_size")


def _import_file(name: str, path: str) -> types.ModuleType:
    """Import one source file as module ``name`` (the official files are not an installable package)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official file not found: {path} (expected a kaist-cvml/part-catseg checkout)")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def load_official_modules(root: str) -> tuple[types.ModuleType, types.ModuleType]:
    """(aggregator module, CLIP module) imported from an official checkout at ``root``."""
    return (
        _import_file("_official_part_cat_seg_model", os.path.join(root, AGGREGATOR_FILE)),
        _import_file("_official_model_vpt", os.path.join(root, CLIP_FILE)),
    )


def _pad_batch(images: list[torch.Tensor], divisor: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """detectron2 ``ImageList.from_tensors``: zero-pad to the largest size rounded up to ``divisor``."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    if divisor > 1:
        h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def _sem_seg_postprocess(result: torch.Tensor, img_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """detectron2 ``sem_seg_postprocess``: crop to the pre-padding size, bilinear to (height, width)."""
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False)[0]


def _object_id(record: dict[str, Any]) -> int:
    """The record's Oracle-Obj object (the official inference cannot run without one)."""
    obj = record_object_index(record)
    if obj is None:
        raise KeyError("the official inference needs the record's object: 'instances' or 'object_class'")
    return obj


def _attention_pairs(official_clip: nn.Module, our_clip: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, official MHA, our MHA) of every CLIP block, visual and text."""
    pairs = []
    for tower, theirs, ours in (("visual", official_clip.visual.transformer, our_clip.visual.transformer),
                                ("text", official_clip.transformer, our_clip.transformer)):
        if len(theirs.resblocks) != len(ours.resblocks):
            raise ValueError(f"{tower} CLIP depth: official build_model made {len(theirs.resblocks)} blocks, "
                             f"ours has {len(ours.resblocks)}")
        for i, (a, b) in enumerate(zip(theirs.resblocks, ours.resblocks)):
            pairs.append((f"{tower}.{i}", a.attn, b.attn))
    return pairs


class OfficialPartCATSeg:
    """The official inference path around the official modules, with ``model``'s weights.

    Constructing it *is* the official start-up; :attr:`startup_seconds` splits its time into CLIP
    construction, the text pass and the aggregator + checkpoint load.
    """

    def __init__(self, model: nn.Module, root: str) -> None:
        t0 = time.perf_counter()
        agg_mod, clip_mod = load_official_modules(root)
        self.model = model
        self.device = torch.device(model.device)
        self.notes: list[str] = [
            "DINOv2: our timm model with fused attention off (official: torch.hub, explicit softmax)",
            "tokenizer: ours (open_clip's copy of OpenAI's BPE)",
        ]
        our_clip = model.clip_model
        clip_state = {k: v.detach().clone() for k, v in our_clip.state_dict().items() if k != "attn_mask"}

        # --- CLIP: official build_model (fp16 cast, strict=False load) --------------------------
        meta = {k: 0 for k in _CLIP_META_KEYS}  # read-and-deleted by build_model, values unused
        clip = clip_mod.build_model({**clip_state, **meta}).to(self.device)
        official_keys = set(clip.state_dict())
        missing, unexpected = sorted(official_keys - set(clip_state)), sorted(set(clip_state) - official_keys)
        if missing or unexpected:
            raise ValueError(f"{CLIP_FILE}: our CLIP state dict does not fit the official CLIP (build_model loads "
                             f"non-strictly): missing {missing[:5]} ({len(missing)}), unexpected "
                             f"{unexpected[:5]} ({len(unexpected)})")
        changed = []
        for name, theirs, ours in _attention_pairs(clip, our_clip):
            if theirs.num_heads != ours.num_heads:
                changed.append(f"{name}: {theirs.num_heads}->{ours.num_heads}")
                theirs.num_heads = ours.num_heads
                theirs.head_dim = theirs.embed_dim // ours.num_heads
        if changed:
            self.notes.append(f"CLIP heads: build_model's width//64 rule overridden for a reduced CLIP "
                              f"({len(changed)} blocks, e.g. {changed[0]})")
        if self.device.type == "cuda":
            self.notes.append("start-up text pass: fp16 on CUDA, as officially")
        else:
            # no official CPU path (it calls .cuda()); fp16 GEMMs on a CPU would measure nothing useful
            clip.float()
            clip.load_state_dict(clip_state, strict=True)
            self.notes.append("start-up text pass: fp32 on the CPU (official: fp16 on CUDA)")
        t1 = time.perf_counter()

        # --- the predictor's four text tensors ----------------------------------------------------
        self.bg = model.sem_seg_head.predictor.non_object_embedding.detach().to(self.device) if model.bg_on else None
        self.text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, vocab in (("train", model.train_vocabulary), ("test", model.vocabulary)):
            self.text[split] = (
                self._class_embeddings(clip, list(vocab.part_classes) + list(vocab.object_classes), model.templates)
                .permute(1, 0, 2).float(),
                self._class_embeddings(clip, list(vocab.classes), model.templates).permute(1, 0, 2).float(),
            )
        self.clip_model = clip.float()
        t2 = time.perf_counter()

        # --- aggregator, the meta-arch's construction-time copies, the checkpoint load ------------
        ours = model.aggregator
        block = ours.layers[0].swin_block.block_1
        self.transformer = agg_mod.Aggregator(
            text_guidance_dim=ours.conv_proj_feat.out_channels,
            text_guidance_proj_dim=ours.text_guidance_projection[0].out_features,
            appearance_guidance_dim=ours.guidance_projection[0].in_channels,
            appearance_guidance_proj_dim=ours.guidance_projection[0].out_channels,
            decoder_dims=(ours.decoder1.conv.double_conv[0].out_channels,
                          ours.decoder2.conv.double_conv[0].out_channels),
            decoder_guidance_dims=[p[0].in_channels for p in ours.decoder_guidance_projection],
            decoder_guidance_proj_dims=[p[0].out_channels for p in ours.decoder_guidance_projection],
            num_layers=len(ours.layers),
            nheads=block.attn.num_heads,
            hidden_dim=ours.hidden_dim,
            pooling_size=tuple(ours.layers[0].attention.pool.kernel_size),
            feature_resolution=tuple(block.input_resolution),
            window_size=block.window_size,
            attention_type="linear",  # the config's value; the official aggregator ignores it ("query")
            prompt_channel=ours.conv1.in_channels,
        ).to(self.device)
        t = self.transformer
        t.conv2.load_state_dict(t.conv1.state_dict())
        t.layers_object.load_state_dict(t.layers.state_dict())
        t.layers_specific_part.load_state_dict(t.layers.state_dict())
        agg_state = ours.state_dict()
        for key, theirs in t.state_dict().items():  # buffers the checkpoint would overwrite
            if key.endswith("attn_mask") and key in agg_state and not torch.equal(theirs, agg_state[key].to(theirs)):
                raise ValueError(f"{AGGREGATOR_FILE}: our {key} differs from the official Swin mask")
        t.load_state_dict(agg_state, strict=True)
        self.clip_model.load_state_dict(clip_state, strict=True)
        self.clip_model.eval()
        t.eval()

        self.backbone = copy.deepcopy(model.backbone).eval()
        for module in self.backbone.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False

        vocab = model.vocabulary
        self.num_parts = len(vocab.part_classes)
        # predictor: text_to_part_map[None, None, None, :Nop], text_to_obj_in_part_map[None, None, None, :]
        index_kw = dict(dtype=torch.long, device=self.device)
        self.part_index_map = torch.as_tensor(vocab.class_to_part, **index_kw)[None, None, None, :]
        self.obj_index_map = torch.as_tensor(vocab.class_to_object, **index_kw)[None, None, None, :]
        self.test_classes = list(vocab.classes)
        self.test_obj_classes = list(vocab.objects)
        t3 = time.perf_counter()
        self.startup_seconds = {"clip_build": t1 - t0, "text": t2 - t1, "aggregator_and_load": t3 - t2}

    @torch.no_grad()
    def _class_embeddings(self, clip: nn.Module, names: list[str], templates: list[str]) -> torch.Tensor:
        """The predictor's ``class_embeddings``: one ``encode_text`` per class over 77 tokens, then the
        background row; (P, T(+1), C)."""
        from .modeling.clip import tokenize

        rows = []
        for name in names:
            if ", " in name:
                texts = [t.format(s) for t in templates for s in name.split(", ")]
            else:
                texts = [t.format(name) for t in templates]
            emb = clip.encode_text(tokenize(texts).to(self.device))
            emb /= emb.norm(dim=-1, keepdim=True)
            if len(templates) != emb.shape[0]:
                emb = emb.reshape(len(templates), -1, emb.shape[-1]).mean(dim=1)
                emb /= emb.norm(dim=-1, keepdim=True)
            rows.append(emb)
        weights = torch.stack(rows, dim=1)
        if self.bg is not None:
            bg = self.bg / self.bg.norm(dim=-1, keepdim=True)
            weights = torch.cat([weights, bg.unsqueeze(0).repeat(len(weights), 1, 1)], dim=-2)
        return weights

    @torch.no_grad()
    def __call__(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The meta-arch's inference forward (batch size 1, as the official code assumes)."""
        if len(batched_inputs) != 1:
            raise ValueError(f"the official inference takes one image per call, got {len(batched_inputs)}")
        model, device = self.model, self.device
        images = [x["image"].to(device) for x in batched_inputs]
        for x in batched_inputs:  # the official forward moves the label maps even at test time
            for key in ("obj_part_sem_seg", "sem_seg"):
                if key in x:
                    x[key].to(device)

        clip_images, _ = _pad_batch([(x - model.clip_pixel_mean) / model.clip_pixel_std for x in images],
                                    model.size_divisibility)
        dino_images, image_sizes = _pad_batch([(x - model.pixel_mean) / model.pixel_std for x in images],
                                              model.size_divisibility)
        clip_images = F.interpolate(clip_images, size=model.clip_resolution, mode="bilinear", align_corners=False)
        clip_features = self.clip_model.encode_image(clip_images, dense=True)
        features_dino = self.backbone(dino_images)

        # head: drop CLS, tokens -> (B, C, h, w); predictor: reversed guidance, repeated text
        b, n, c = clip_features.shape
        side = int(round((n - 1) ** 0.5))
        img_feats = clip_features[:, 1:, :].transpose(1, 2).reshape(b, c, side, side)
        vis = [features_dino[k] for k in features_dino.keys()][::-1]
        part_obj_text, specific_text = self.text["test"]
        _, outputs, costs = self.transformer(
            img_feats, part_obj_text.repeat(b, 1, 1, 1), specific_text.repeat(b, 1, 1, 1), vis,
            self.part_index_map, self.obj_index_map, self.num_parts,
        )
        costs = {k: v.cpu() for k, v in costs.items()}

        obj_class = self.test_obj_classes[_object_id(batched_inputs[0])]
        select_mask = [i for i, name in enumerate(self.test_classes) if obj_class not in name]
        outputs_all = outputs.sigmoid()
        outputs = (outputs.sigmoid()[:, :-1, :, :] if self.bg is not None else outputs.sigmoid()).cpu()
        outputs[:, select_mask, :, :] = -1.0

        image_size = image_sizes[0]
        height = batched_inputs[0].get("height", image_size[0])
        width = batched_inputs[0].get("width", image_size[1])
        output = _sem_seg_postprocess(outputs[0].cpu(), image_size, height, width)
        output_all = _sem_seg_postprocess(outputs_all[0].cpu(), image_size, height, width)
        results = [{"sem_seg": output.detach().cpu(), "sem_seg_all": output_all.detach().cpu(), "costs": costs}]
        gc.collect()  # the official per-image clean-up, re-enacted on purpose (it is what is timed)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return results
