"""Ground-truth conversions of CAT-Seg's ``datasets/prepare_*.py`` (evaluation sets + COCO-Stuff train).

Each ``prepare_*`` function reads the original download under ``root`` (= ``$DETECTRON2_DATASETS``) and
writes the detectron2-style label images the loaders expect (see ``semantic.SEMANTIC_LAYOUTS``):

* ``coco-stuff``: stuffthingmaps (0-based COCO ids, 255 unlabeled) -> 171 contiguous ids, rest 255.
* ``ade150``: ``label - 1`` in uint8 (0 "other" -> 255).
* ``ade847``: ADE20K-2021 object masks ``(R/10)*256 + G`` -> 847 contiguous ids, 65535 elsewhere, uint16
  TIFF; images and labels with a short side > 512 are resized to 512 (bilinear / nearest).
* ``voc``: VOC 0 (background) -> 255 (``annotations_detectron2``) or -> 20 (``annotations_detectron2_bg``),
  classes 1..20 -> 0..19; a GT that is entirely 255 is not written.
* ``pc59``: ``trainval_merged.json`` RLE masks of the val images -> 59 contiguous ids (0 -> 255).
* ``pc459``: ``trainval/<id>.mat`` ``LabelMap - 1`` saved as TIFF (dtype kept).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from partcatseg.vocab import coco_stuff_dataset_ids

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_ID_MAP",
    "VOC_BG_ID_MAP",
    "PC59_ORIGINAL_IDS",
    "pc59_id_map",
    "ade847_id_map",
    "coco_stuff_id_map",
    "prepare_coco_stuff",
    "prepare_ade150",
    "prepare_ade847",
    "prepare_voc",
    "prepare_pc59",
    "prepare_pc459",
    "PREPARERS",
]

# VOC class id -> train id (official clsID_to_trID); the "_bg" variant keeps background as class 20.
VOC_ID_MAP: dict[int, int] = {0: 255, **{i: i - 1 for i in range(1, 21)}, 255: 255}
VOC_BG_ID_MAP: dict[int, int] = {**VOC_ID_MAP, 0: 20}
# Pascal Context ids of the 59 classes (+ 0 = background), official ``_mapping`` before sorting.
PC59_ORIGINAL_IDS: tuple[int, ...] = (
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284,
    158, 159, 416, 33, 162, 420, 454, 295, 296, 427, 44, 45, 46, 308, 59,
    440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355,
    85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
)
_ADE847_IDS_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "vocab", "data", "ade847_ids.json"
)


def coco_stuff_id_map() -> dict[int, int]:
    """0-based COCO id (as in stuffthingmaps) -> contiguous id 0..170."""
    return {orig - 1: i for i, orig in enumerate(coco_stuff_dataset_ids())}


def pc59_id_map() -> dict[int, int]:
    """Pascal Context id -> contiguous id; 0 (background) -> 255, the 59 classes -> 0..58 in id order."""
    ids = sorted(PC59_ORIGINAL_IDS)
    return {k: (i - 1) % 256 for i, k in enumerate(ids)}


def ade847_id_map() -> dict[int, int]:
    """ADE20K-2021 object id -> contiguous id 0..846 (order of ``ade847.json``)."""
    with open(_ADE847_IDS_FILE, encoding="utf-8") as f:
        ids = json.load(f)["ids"]
    if len(ids) != 847 or len(set(ids)) != 847:
        raise ValueError(f"{_ADE847_IDS_FILE}: expected 847 distinct ids")
    return {int(k): i for i, k in enumerate(ids)}


def _remap(label: np.ndarray, id_map: dict[int, int], fill: int, dtype) -> np.ndarray:
    """Values in ``id_map`` are mapped, everything else becomes ``fill``."""
    out = np.full(label.shape, fill, dtype=dtype)
    for v in np.unique(label):
        if int(v) in id_map:
            out[label == v] = id_map[int(v)]
    return out


def _need_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: expected directory '{path}' does not exist (see datasets/README.md)")


def _need_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: expected file '{path}' does not exist (see datasets/README.md)")


def _files(directory: str, ext: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(ext) and not n.startswith("._"))


def prepare_coco_stuff(root: str, splits: Iterable[str] = ("train2017", "val2017"), progress: bool = True) -> int:
    base = os.path.join(root, "coco-stuff")
    id_map = coco_stuff_id_map()
    n = 0
    for split in splits:
        src, dst = os.path.join(base, "annotations", split), os.path.join(base, "annotations_detectron2", split)
        _need_dir(src, "COCO-Stuff")
        os.makedirs(dst, exist_ok=True)
        for name in tqdm(_files(src, ".png"), disable=not progress, desc=f"coco-stuff {split}"):
            lab = np.asarray(Image.open(os.path.join(src, name)))
            if lab.dtype != np.uint8:
                raise ValueError(f"{os.path.join(src, name)}: expected an 8-bit label map, got {lab.dtype}")
            Image.fromarray(_remap(lab, id_map, 255, np.uint8)).save(os.path.join(dst, name))
            n += 1
    return n


def prepare_ade150(root: str, progress: bool = True) -> int:
    base = os.path.join(root, "ADEChallengeData2016")
    src, dst = os.path.join(base, "annotations", "validation"), os.path.join(base, "annotations_detectron2", "validation")
    _need_dir(src, "ADE20K-150")
    os.makedirs(dst, exist_ok=True)
    n = 0
    for name in tqdm(_files(src, ".png"), disable=not progress, desc="ade150 validation"):
        img = np.asarray(Image.open(os.path.join(src, name)))
        if img.dtype != np.uint8:
            raise ValueError(f"{os.path.join(src, name)}: expected an 8-bit label map, got {img.dtype}")
        Image.fromarray(img - np.uint8(1)).save(os.path.join(dst, name))  # 0 wraps to 255 (ignore)
        n += 1
    return n


def _ade_class_mask(seg_png: str) -> np.ndarray:
    with Image.open(seg_png) as im:
        seg = np.array(im)
    r, g = seg[:, :, 0], seg[:, :, 1]
    return (r / 10).astype(np.int32) * 256 + g.astype(np.int32)


def prepare_ade847(root: str, max_size: int = 512, progress: bool = True, include_training: bool = False) -> int:
    """Validation images + uint16 TIFF labels from ``ADE20K_2021_17_01/index_ade20k.pkl`` (official: val only)."""
    import cv2

    base = os.path.join(root, "ADE20K_2021_17_01")
    index_file = os.path.join(base, "index_ade20k.pkl")
    _need_file(index_file, "ADE20K-847")
    with open(index_file, "rb") as f:
        index = pickle.load(f)
    id_map = ade847_id_map()
    for split in ("training", "validation"):
        os.makedirs(os.path.join(base, "images_detectron2", split), exist_ok=True)
        os.makedirs(os.path.join(base, "annotations_detectron2", split), exist_ok=True)
    n = 0
    pairs = list(zip(index["folder"], index["filename"]))
    for folder, file_name in tqdm(pairs, disable=not progress, desc="ade847"):
        split = "validation" if file_name.split("_")[1] == "val" else "training"
        if split == "training" and not include_training:
            continue
        img_path = os.path.join(root, folder, file_name)
        img = np.asarray(Image.open(img_path))
        lab = _ade_class_mask(img_path.replace(".jpg", "_seg.png"))
        h, w = img.shape[0], img.shape[1]
        if w >= h > max_size:
            size = (round(w / float(h) * max_size), max_size)  # cv2 takes (w, h)
        elif h >= w > max_size:
            size = (max_size, round(h / float(w) * max_size))
        else:
            size = None
        if size is not None:
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
        out = _remap(lab, id_map, 65535, np.uint16)
        Image.fromarray(img).save(os.path.join(base, "images_detectron2", split, file_name))
        Image.fromarray(out).save(os.path.join(base, "annotations_detectron2", split, file_name.replace(".jpg", ".tif")))
        n += 1
    return n


def prepare_voc(root: str, progress: bool = True) -> tuple[int, int]:
    """Returns the numbers of GT files written without / with background."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    list_file = os.path.join(voc, "ImageSets", "Segmentation", "val.txt")
    _need_file(list_file, "PASCAL VOC 2012")
    _need_dir(os.path.join(voc, "SegmentationClassAug"), "PASCAL VOC 2012")
    ids = [line.strip() for line in open(list_file, encoding="utf-8") if line.strip()]
    variants = (("annotations_detectron2", VOC_ID_MAP), ("annotations_detectron2_bg", VOC_BG_ID_MAP))
    for sub, _ in variants:
        os.makedirs(os.path.join(voc, sub, "val"), exist_ok=True)
    written = [0, 0]
    for i in tqdm(ids, disable=not progress, desc="voc val"):
        mask = np.array(Image.open(os.path.join(voc, "SegmentationClassAug", i + ".png")))
        for k, (sub, id_map) in enumerate(variants):
            out = _remap(mask, id_map, 255, np.uint8)
            if np.all(out == 255):
                continue  # official: an all-ignore GT is not written
            Image.fromarray(out).save(os.path.join(voc, sub, "val", i + ".png"), "PNG")
            written[k] += 1
    return written[0], written[1]


def prepare_pc59(root: str, progress: bool = True) -> int:
    import pycocotools.mask as mask_util

    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    json_path = os.path.join(voc, "trainval_merged.json")
    _need_file(json_path, "PASCAL Context-59")
    out_dir = os.path.join(voc, "annotations_detectron2", "pc59_val")
    os.makedirs(out_dir, exist_ok=True)
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    val_images = {d["image_id"]: d for d in data["images"] if d["phase"] == "val"}
    annos: dict = {}
    for ann in data["annos_segmentation"]:
        if ann["image_id"] in val_images:
            annos.setdefault(ann["image_id"], []).append(ann)
    id_map = pc59_id_map()
    n = 0
    for image_id, im in tqdm(val_images.items(), disable=not progress, desc="pc59 val"):
        mask = np.zeros((im["height"], im["width"]))
        if image_id not in annos:
            logger.warning("PASCAL Context-59: val image %s has no annotation (official script crashes here)", im["file_name"])
        for ann in annos.get(image_id, []):
            segm = ann["segmentation"]
            if isinstance(segm.get("counts"), list):
                segm = mask_util.frPyObjects(segm, *segm["size"])
            mask[np.nonzero(mask_util.decode(segm))] = ann["category_id"]
        out = _remap(mask, id_map, 255, np.uint8)
        Image.fromarray(out).save(os.path.join(out_dir, im["file_name"].replace("jpg", "png")))
        n += 1
    return n


def prepare_pc459(root: str, progress: bool = True) -> int:
    try:
        import scipy.io
    except ImportError as e:  # pragma: no cover - scipy comes with scikit-image
        raise ImportError("prepare_pc459 needs scipy (pip install scipy) to read the .mat label maps") from e
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    list_file = os.path.join(voc, "pascalcontext_val.txt")
    if os.path.isfile(list_file):
        ids = [line.strip() for line in open(list_file, encoding="utf-8") if line.strip()]
    else:
        json_path = os.path.join(voc, "trainval_merged.json")
        _need_file(json_path, "PASCAL Context-459 (pascalcontext_val.txt from CAT-Seg's datasets/, or trainval_merged.json)")
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        ids = sorted(os.path.splitext(d["file_name"])[0] for d in data["images"] if d["phase"] == "val")
        logger.warning("PASCAL Context-459: %s missing; using the %d val images of trainval_merged.json", list_file, len(ids))
    _need_dir(os.path.join(voc, "trainval"), "PASCAL Context-459")
    out_dir = os.path.join(voc, "annotations_detectron2", "pc459_val")
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    for i in tqdm(ids, disable=not progress, desc="pc459 val"):
        src = os.path.join(voc, "trainval", i + ".mat")
        if not os.path.exists(src):
            continue  # official: silently skipped
        mask = scipy.io.loadmat(src)["LabelMap"]
        mask = mask - 1
        if np.amin(mask) < 0:
            raise ValueError(f"{src}: LabelMap has values < 1")
        Image.fromarray(mask).save(os.path.join(out_dir, i + ".tif"), "TIFF")
        n += 1
    return n


PREPARERS: dict[str, Callable[..., object]] = {
    "coco-stuff": prepare_coco_stuff,
    "ade150": prepare_ade150,
    "ade847": prepare_ade847,
    "voc": prepare_voc,
    "pc59": prepare_pc59,
    "pc459": prepare_pc459,
}
