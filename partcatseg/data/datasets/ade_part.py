"""ADE20K-Part-234 (OV-PARTS) loaders.

Layout (``ADE20KPart234/`` under ``$DETECTRON2_DATASETS``)::

    images/{training,validation}/*.jpg
    annotations_detectron2_part/{training,validation}/*.png   16-bit obj-part ids, 65535 = ignore
    ade20k_instance_{train,val}.json                          COCO-style object instances
    train_16shot.json                                         optional few-shot image list

Object instances come from the json (``category_id`` = 0-based index into the 44 objects); there are no
object PNGs (``obj_sem_seg_file_name`` is the official placeholder ``"NA"``). Records:

* per image (``ade_obj_part_sem_seg_train``): ``file_name``, ``height``, ``width``, ``image_id``,
  ``obj_annotations`` (all instances: ``iscrowd``, ``bbox``, ``category_id``, ``segmentation``,
  ``bbox_mode``), ``obj_sem_seg_file_name`` = "NA", ``sem_seg_file_name`` (part PNG).
* per instance (``..._obj_condition``, ``..._few_shot``): the same with ``obj_annotations`` = [that
  instance] and ``category_id`` = its object id.
* ``ade_obj_part_sem_seg_val_obj_condition`` (the test set): every validation instance, then the
  training instances of *novel* objects (OV-PARTS protocol: novel objects are never seen in training,
  so their training images are test data too).

The part PNG path is derived from the image path by swapping the ``images`` folder for
``annotations_detectron2_part`` and the extension for ``.png`` (officially ``str.replace`` on the path).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from partcatseg.vocab import get_part_dataset

from .common import list_files, load_coco_instances, read_json, require_dir, require_file, require_files_exist

logger = logging.getLogger(__name__)

__all__ = ["ADE_LAYOUT", "ADE_COMMAND", "ADE_SPLITS", "load_ade_part", "load_ade_part_test"]

# split -> (image folder, part-annotation folder, instance json)
ADE_SPLITS: dict[str, tuple[str, str, str]] = {
    "train": ("images/training", "annotations_detectron2_part/training", "ade20k_instance_train.json"),
    "val": ("images/validation", "annotations_detectron2_part/validation", "ade20k_instance_val.json"),
}
ADE_LAYOUT = """\
ADE20KPart234/
  images/{training,validation}/*.jpg
  annotations_detectron2_part/{training,validation}/*.png
  ade20k_instance_train.json
  ade20k_instance_val.json
  train_16shot.json              (few-shot splits only)"""
ADE_COMMAND = (
    "gdown https://drive.google.com/uc?id=1EBVPW_tqzBOQ_DC6yLcouyxR7WrctRKi && "
    "tar -xzf ADE20KPart234.tar.gz -C $DETECTRON2_DATASETS"
)
_NAME = "ADE20K-Part-234"


def _base_object_ids() -> set[int]:
    return set(get_part_dataset("ade_part_234").obj_map)


def load_ade_part(
    dataset_dir: str,
    split: str,
    *,
    per_image: bool,
    novel_only: bool = False,
    data_list: Optional[str] = None,
    exclude_list: Optional[str] = None,
) -> list[dict[str, Any]]:
    """Records of one split (see the module docstring).

    ``novel_only`` keeps only instances of novel objects (per-instance mode); ``data_list`` keeps only
    the images of a few-shot list, ``exclude_list`` drops them (matched by basename).
    """
    if split not in ADE_SPLITS:
        raise KeyError(f"ADE20K-Part-234 split must be one of {list(ADE_SPLITS)}, got {split!r}")
    image_dir, part_dir, json_name = ADE_SPLITS[split]
    image_root = os.path.join(dataset_dir, image_dir)
    part_root = os.path.join(dataset_dir, part_dir)
    json_file = os.path.join(dataset_dir, json_name)
    for d in (image_root, part_root):
        require_dir(d, _NAME, ADE_LAYOUT, ADE_COMMAND)
    require_file(json_file, _NAME, ADE_LAYOUT, ADE_COMMAND)
    images = load_coco_instances(json_file, image_root, dataset=_NAME)

    keep = drop = None
    if data_list is not None:
        require_file(data_list, _NAME, ADE_LAYOUT, ADE_COMMAND)
        keep = {os.path.basename(d["file_name"]) for d in read_json(data_list)}
    if exclude_list is not None:
        require_file(exclude_list, _NAME, ADE_LAYOUT, ADE_COMMAND)
        drop = {os.path.basename(d["file_name"]) for d in read_json(exclude_list)}
    if keep is not None or drop is not None:
        images = [
            im for im in images
            if (keep is None or os.path.basename(im["file_name"]) in keep)
            and (drop is None or os.path.basename(im["file_name"]) not in drop)
        ]

    for im in images:
        rel = os.path.relpath(im["file_name"], image_root)
        im["sem_seg_file_name"] = os.path.join(part_root, os.path.splitext(rel)[0] + ".png")
    require_files_exist([im["file_name"] for im in images], "images listed in " + json_name, _NAME,
                        f"Re-extract the dataset:\n  {ADE_COMMAND}")
    require_files_exist([im["sem_seg_file_name"] for im in images], "part annotation PNGs", _NAME,
                        f"Every image needs its part PNG in '{part_root}'. Re-extract the dataset:\n  {ADE_COMMAND}")
    listed = {os.path.basename(im["file_name"]) for im in images}
    unlisted = [n for n in list_files(image_root, ".jpg") if n not in listed]
    if unlisted and keep is None and drop is None:
        logger.warning("%s: %d images in '%s' are not in %s (e.g. %s); they are not used",
                       _NAME, len(unlisted), image_root, json_name, unlisted[:3])

    base_ids = _base_object_ids() if novel_only else set()
    records: list[dict[str, Any]] = []
    for im in images:
        common = {"file_name": im["file_name"], "height": im["height"], "width": im["width"], "image_id": im["image_id"]}
        if per_image:
            records.append({**common, "obj_annotations": im["annotations"], "obj_sem_seg_file_name": "NA",
                            "sem_seg_file_name": im["sem_seg_file_name"]})
            continue
        for ann in im["annotations"]:
            if novel_only and ann["category_id"] in base_ids:
                continue
            records.append({**common, "obj_annotations": [ann], "obj_sem_seg_file_name": "NA",
                            "category_id": ann["category_id"], "sem_seg_file_name": im["sem_seg_file_name"]})
    return records


def load_ade_part_test(dataset_dir: str, *, few_shot: bool = False) -> list[dict[str, Any]]:
    """``ade_obj_part_sem_seg_val_obj_condition`` (and ``_val_few_shot``): val instances + novel train instances.

    With ``few_shot`` the training images of ``train_16shot.json`` are left out (they were trained on).
    """
    val = load_ade_part(dataset_dir, "val", per_image=False)
    exclude = os.path.join(dataset_dir, "train_16shot.json") if few_shot else None
    train = load_ade_part(dataset_dir, "train", per_image=False, novel_only=True, exclude_list=exclude)
    return val + train
