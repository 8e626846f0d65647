"""PartImageNet (Seg) and PartImageNet-OOD loaders, and the ImageNet synset -> name table.

Layout after ``tools/prepare_partimagenet.py`` (``PartImageNet/`` or ``PartImageNet_OOD/``)::

    images/{train,val}/*.JPEG          file names start with the ImageNet synset: n01440764_10029.JPEG
    annotations/{train,val}/*.png      part masks (kept, not read: labels come from the polygons)
    train.json, val.json               COCO style; annotation ``category_id`` = one of the 40 part
                                       categories ("Quadruped Head", ..., "Bottle Body")

The object class of an image is not in the json: the official mapper looks the file-name synset up in a
1000-class table (``partimagenet_id_map``) and finds that name in the dataset's object list. We do it
once here and store the object id in every record as ``obj_class_id`` (index into the *full* object
list, like the object ids of the Pascal PNGs). Records:

* per image (``*_train``, ``*_val``, ``*_val_obj_condition``): ``file_name``, ``height``, ``width``,
  ``image_id``, ``obj_class_id``, ``obj_part_annotations`` (the part polygons: ``category_id`` = part
  category, ``segmentation``, ``bbox``, ``iscrowd``, ``bbox_mode``), ``obj_sem_seg_file_name`` = "NA",
  ``sem_seg_file_name`` (the part PNG path, unused).
* per part annotation (``*_train_obj_condition``, unused by the configs): the same with
  ``obj_part_annotations`` = [that annotation] and ``category_id`` = its *part category* (sic, official).

Deviation: the official records call the part polygons ``obj_annotations``; they are named
``obj_part_annotations`` here because they are parts, not objects (ADE's ``obj_annotations`` are objects).
"""
from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from typing import Any

from partcatseg.vocab import get_part_dataset

from .common import list_files, load_coco_instances, require_dir, require_file, require_files_exist

logger = logging.getLogger(__name__)

__all__ = [
    "imagenet_synset_names",
    "synset_of",
    "object_class_id",
    "PARTIMAGENET_LAYOUT",
    "PARTIMAGENET_COMMAND",
    "load_partimagenet",
]

_SYNSET_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "vocab", "data",
    "imagenet_synset_names.json",
)
# vocabulary key -> (folder under $DETECTRON2_DATASETS, printable name)
_FOLDERS = {"partimagenet": ("PartImageNet", "PartImageNet"), "partimagenet_ood": ("PartImageNet_OOD", "PartImageNet-OOD")}

PARTIMAGENET_LAYOUT = """\
PartImageNet/                    (PartImageNet_OOD/ for the OOD split)
  images/{train,val}/*.JPEG
  annotations/{train,val}/*.png
  train.json
  val.json"""
PARTIMAGENET_COMMAND = (
    "download PartImageNet_Seg (https://github.com/TACJu/PartImageNet), extract it to "
    "$DETECTRON2_DATASETS/PartImageNet, then: python tools/prepare_partimagenet.py "
    "--data-dir $DETECTRON2_DATASETS/PartImageNet [--synset-mapping LOC_synset_mapping.txt]"
)
_OOD_COMMAND = (
    "download PartImageNet_OOD (https://github.com/TACJu/PartImageNet), flatten images/{train,val}/<synset>/* "
    "into images/{train,val}/ and put {train,val}.json at $DETECTRON2_DATASETS/PartImageNet_OOD/"
)


@lru_cache(maxsize=None)
def _synset_table() -> dict[str, str]:
    with open(_SYNSET_FILE, encoding="utf-8") as f:
        table = json.load(f)["synset_names"]
    if len(table) != 1000:
        raise ValueError(f"{_SYNSET_FILE}: expected 1000 ImageNet synsets, found {len(table)}")
    return table


def imagenet_synset_names() -> dict[str, str]:
    """ImageNet-1k synset -> first name in ``LOC_synset_mapping.txt`` (the official ``partimagenet_id_map``)."""
    return dict(_synset_table())


def synset_of(file_name: str) -> str:
    """Synset prefix of a PartImageNet file name (``.../n01440764_10029.JPEG`` -> ``n01440764``)."""
    return os.path.basename(file_name).split("_")[0]


def object_class_id(file_name: str, obj_classes: tuple[str, ...] | list[str]) -> int:
    """Index of the image's object (from its file-name synset) in ``obj_classes``."""
    wnid = synset_of(file_name)
    name = _synset_table().get(wnid)
    if name is None:
        raise KeyError(f"'{file_name}': '{wnid}' is not an ImageNet-1k synset")
    try:
        return list(obj_classes).index(name)
    except ValueError:
        raise KeyError(
            f"'{file_name}': its synset {wnid} ('{name}') is not one of the dataset's {len(obj_classes)} objects; "
            f"was the dataset preprocessed? ({PARTIMAGENET_COMMAND})"
        ) from None


def load_partimagenet(dataset_dir: str, split: str, *, key: str = "partimagenet", per_image: bool = True) -> list[dict[str, Any]]:
    """Records of ``split`` ("train" or "val") of PartImageNet (``key="partimagenet"``) or OOD (``"partimagenet_ood"``)."""
    if key not in _FOLDERS:
        raise KeyError(f"key must be one of {list(_FOLDERS)}, got {key!r}")
    if split not in ("train", "val"):
        raise KeyError(f"PartImageNet split must be 'train' or 'val', got {split!r}")
    name = _FOLDERS[key][1]
    command = PARTIMAGENET_COMMAND if key == "partimagenet" else _OOD_COMMAND
    image_root = os.path.join(dataset_dir, "images", split)
    json_file = os.path.join(dataset_dir, f"{split}.json")
    require_dir(image_root, name, PARTIMAGENET_LAYOUT, command)
    require_file(json_file, name, PARTIMAGENET_LAYOUT, command)
    images = load_coco_instances(json_file, image_root, dataset=name)
    require_files_exist([im["file_name"] for im in images], f"images listed in {split}.json", name,
                        f"Re-run the preparation:\n  {command}")
    listed = {os.path.basename(im["file_name"]) for im in images}
    unlisted = [n for n in list_files(image_root, "") if n not in listed]
    if unlisted:
        logger.warning("%s: %d files in '%s' are not in %s.json (e.g. %s); they are not used",
                       name, len(unlisted), image_root, split, unlisted[:3])

    obj_classes = get_part_dataset(key).obj_classes
    ann_root = os.path.join(dataset_dir, "annotations", split)
    records: list[dict[str, Any]] = []
    for im in images:
        stem = os.path.splitext(os.path.relpath(im["file_name"], image_root))[0]
        common = {
            "file_name": im["file_name"],
            "height": im["height"],
            "width": im["width"],
            "image_id": im["image_id"],
            "obj_class_id": object_class_id(im["file_name"], obj_classes),
        }
        sem = os.path.join(ann_root, stem + ".png")
        if per_image:
            records.append({**common, "obj_part_annotations": im["annotations"], "obj_sem_seg_file_name": "NA",
                            "sem_seg_file_name": sem})
        else:
            for ann in im["annotations"]:
                records.append({**common, "obj_part_annotations": [ann], "obj_sem_seg_file_name": "NA",
                                "category_id": ann["category_id"], "sem_seg_file_name": sem})
    return records
