"""Config keys of PartCLIPSeg (kaist-cvml/part-clipseg), added to the defaults by ``_build_defaults``.

Official keys: part-clipseg declares no defaults function for them; its YAMLs set them under
``set_new_allowed(True)`` and ``PartCLIPSeg.from_config`` reads them with ``hasattr`` fallbacks. Those
fallbacks are the defaults below (``USE_ATTENTION`` is off unless a YAML turns it on — every
official PartCLIPSeg YAML does). ``TEST.VISUALIZE_ATTN`` is read by the official ``train_net.py`` the
same way. Everything else part-clipseg's configs use (``add_deeplab_config`` and
``add_mask_former_config``, identical to part-catseg's) is already declared.

Framework keys (not in any official code) follow, clearly separated.
"""
from __future__ import annotations

from .node import CfgNode

__all__ = ["add_partclipseg_config"]


def add_partclipseg_config(cfg: CfgNode) -> None:
    """Add the PartCLIPSeg keys (official ones with their official defaults, then framework ones)."""
    # ------------------------------------------------------------------ official
    p = cfg.MODEL.PARTCLIPSEG = CfgNode()
    p.OBJ_LAMBDA = 1.0  # weight of the object(+background) BCE term
    p.PART_LAMBDA = 1.0  # weight of the generalized-part BCE term
    p.USE_ATTENTION = False  # attention-control losses (separation + enhancement)
    p.ATTN_MASK_THRESHOLD = 0.3  # a smoothed, normalised part attention above it covers a pixel
    p.ATTN_SEP_LAMBDA = 0.1  # weight of the separation loss
    p.ATTN_ENH_LAMBDA = 0.01  # weight of the enhancement loss
    cfg.TEST.VISUALIZE_ATTN = False  # official evaluator: also save attention maps (not implemented here)

    # ------------------------------------------------------------------ framework
    # Network size: "" = CLIPSeg rd64-refined (the official model; ViT-B/16, decoder width 64);
    # "tiny" = the reduced widths of MODEL.TINY_CLIPSEG (toy configs and tests, CPU training).
    p.ARCH = ""
    # Training from scratch: the CLIPSeg checkpoint loaded into what MODEL.WEIGHTS does not provide
    # (officially from_pretrained("CIDAS/clipseg-rd64-refined") at construction); a weights name or a
    # path; "auto" = clipseg_rd64_refined for the official size, nothing for "tiny"; "" = keep random.
    p.INIT_WEIGHTS = "auto"
    # Side of the square CLIPSeg input (the processor's resize; 352 officially).
    p.INPUT_SIZE = 352
    # Inference re-reads record["file_name"] with PIL as the official code does (it ignores the mapper's
    # resized image); False encodes record["image"] (converted to RGB by INPUT.FORMAT).
    p.REREAD_TEST_IMAGE = True
    # Parameters that train: names (inside partclipseg_model) containing one of these (the official rule);
    # the toy config adds "clip.vision_model" because its tiny CLIP starts from random weights.
    p.TRAINABLE = ["visual_adapter", "clip.text_model.embeddings", "film", "decoder"]
    # Replace an official bug by the intended behaviour (all False = the official numbers):
    p.FIX_TRAIN_COLOR = False  # training feeds the BGR mapper image to the RGB processor
    p.FIX_OBJECT_TEXT_INDEX = False  # object-specific head reads a part's text embedding as "the object's"
    p.FIX_ATTN_OBJECT_LIST = False  # attention loss drops each image's largest object id, not the ignore id
    p.FIX_SMOOTHING_SIGMA = False  # attention smoothing Gaussian has an effective sigma of sigma*sqrt(2)

    t = cfg.MODEL.TINY_CLIPSEG = CfgNode()
    t.TEXT_WIDTH = 64
    t.TEXT_LAYERS = 2
    t.TEXT_HEADS = 2
    t.TEXT_INTERMEDIATE = 128
    t.VISION_WIDTH = 64
    t.VISION_LAYERS = 4
    t.VISION_HEADS = 2
    t.VISION_INTERMEDIATE = 128
    t.IMAGE_SIZE = 96  # input size the position table is made for (6x6 patches of 16)
    t.PATCH_SIZE = 16
    t.PROJECTION_DIM = 64
    t.EXTRACT_LAYERS = [1, 2, 3]
    t.REDUCE_DIM = 32
    t.DECODER_HEADS = 2
    t.DECODER_INTERMEDIATE = 64
