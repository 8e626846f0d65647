"""Pascal-Part-116 (OV-PARTS) loaders; the toy dataset uses the same layout and the same functions.

Layout (``PascalPart116/`` under ``$DETECTRON2_DATASETS``)::

    images/{train,val}/*.jpg
    annotations_detectron2_part/{train,val}/*.png      8-bit, obj-part class id, 255 = ignore
    annotations_detectron2_obj/{train,val}/*.png       8-bit, object id, 255 = background
    annotations_detectron2_part/{train,val}_obj_label_count.json   {png name: [object ids]}
    train_16shot.json                                  optional few-shot image list

Records:

* per image (``voc_obj_part_sem_seg_{train,val}``): ``file_name``, ``sem_seg_file_name`` (part PNG),
  ``obj_sem_seg_file_name`` (object PNG); sorted by file stem (detectron2 ``load_sem_seg``).
* object-conditioned (``..._obj_condition``): one record per (image, object id listed in the label-count
  json): ``category_id`` + the per-image fields (official ``load_binary_mask``).

Deviation: the object PNG path is derived by swapping the directory component
``annotations_detectron2_part`` -> ``annotations_detectron2_obj``; the official code replaces every
"part" (resp. "_part") substring of the whole path, which breaks roots such as ``/data/parts/``.
The few-shot list is matched by image basename (officially by the full path as written in the json).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from .common import (
    DatasetFilesError,
    load_sem_seg,
    read_json,
    replace_path_component,
    require_dir,
    require_file,
    require_files_exist,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PART_DIR",
    "OBJ_DIR",
    "PASCAL_LAYOUT",
    "PASCAL_COMMAND",
    "obj_gt_path",
    "obj_label_count_path",
    "load_obj_part_sem_seg",
    "load_obj_condition",
    "load_few_shot",
]

PART_DIR = "annotations_detectron2_part"
OBJ_DIR = "annotations_detectron2_obj"

PASCAL_LAYOUT = """\
PascalPart116/
  images/{train,val}/*.jpg
  annotations_detectron2_part/{train,val}/*.png
  annotations_detectron2_obj/{train,val}/*.png
  annotations_detectron2_part/{train,val}_obj_label_count.json   (python tools/collect_mask_labels.py ...)
  train_16shot.json                                               (few-shot split only)"""
PASCAL_COMMAND = (
    "gdown https://drive.google.com/uc?id=1QF0BglrcC0teKqx15vP8qJNakGgCWaEH && "
    "tar -xzf PascalPart116.tar.gz -C $DETECTRON2_DATASETS && "
    "find $DETECTRON2_DATASETS/PascalPart116 -name '._*' -delete"
)


def obj_gt_path(sem_seg_file_name: str) -> str:
    """Object PNG of a part PNG (same file name, ``annotations_detectron2_obj`` folder)."""
    return replace_path_component(sem_seg_file_name, PART_DIR, OBJ_DIR)


def obj_label_count_path(gt_root: str) -> str:
    """``<gt_root>_obj_label_count.json`` (official: ``gt_root + "_obj_label_count.json"``)."""
    return gt_root.rstrip("/\\") + "_obj_label_count.json"


def collect_command(gt_root: str) -> str:
    obj_root = replace_path_component(os.path.join(gt_root.rstrip("/\\"), "x"), PART_DIR, OBJ_DIR)
    return f"python tools/collect_mask_labels.py {os.path.dirname(obj_root)} {obj_label_count_path(gt_root)}"


def load_obj_part_sem_seg(
    image_root: str,
    gt_root: str,
    *,
    dataset: str = "Pascal-Part-116",
    layout: str = PASCAL_LAYOUT,
    command: str = PASCAL_COMMAND,
    check_obj_files: bool = True,
) -> list[dict[str, Any]]:
    """Per-image records with part and object PNG paths (official ``load_obj_part_sem_seg``)."""
    records = load_sem_seg(gt_root, image_root, "png", "jpg", dataset=dataset, layout=layout, command=command)
    for r in records:
        r["obj_sem_seg_file_name"] = obj_gt_path(r["sem_seg_file_name"])
    if check_obj_files:
        require_files_exist(
            [r["obj_sem_seg_file_name"] for r in records], "object annotation PNGs", dataset,
            f"Every part PNG needs the object PNG of the same name in '{OBJ_DIR}/'. Prepare it with:\n  {command}",
        )
    return records


def load_obj_condition(
    image_root: str,
    gt_root: str,
    *,
    label_count_file: Optional[str] = None,
    dataset: str = "Pascal-Part-116",
    layout: str = PASCAL_LAYOUT,
    command: str = PASCAL_COMMAND,
) -> list[dict[str, Any]]:
    """One record per (image, object id in the label-count json) with ``category_id`` (``load_binary_mask``)."""
    label_count_file = label_count_file or obj_label_count_path(gt_root)
    # a dataset that is not there at all needs the download, not the label-count tool
    require_dir(image_root, dataset, layout, command)
    require_dir(gt_root, dataset, layout, command)
    require_file(label_count_file, dataset, layout, collect_command(gt_root))
    counts = read_json(label_count_file)
    records = load_obj_part_sem_seg(image_root, gt_root, dataset=dataset, layout=layout, command=command)
    missing = [os.path.basename(r["sem_seg_file_name"]) for r in records
               if os.path.basename(r["sem_seg_file_name"]) not in counts]
    if missing:
        raise DatasetFilesError(
            f"{dataset}: {len(missing)} annotation files are not listed in '{label_count_file}' "
            f"(e.g. {missing[:3]}); regenerate it with:\n  {collect_command(gt_root)}"
        )
    out = []
    for r in records:
        for cat in counts[os.path.basename(r["sem_seg_file_name"])]:
            out.append({"category_id": int(cat), **r})
    logger.info("%s: %d object-conditioned records from %d images", dataset, len(out), len(records))
    return out


def load_few_shot(
    image_root: str,
    gt_root: str,
    data_list: str,
    *,
    dataset: str = "Pascal-Part-116",
    layout: str = PASCAL_LAYOUT,
    command: str = PASCAL_COMMAND,
) -> list[dict[str, Any]]:
    """Per-image records restricted to the images of ``data_list`` (a json list of ``{"file_name": ...}``)."""
    require_file(data_list, dataset, layout, command)
    keep = {os.path.basename(item["file_name"]) for item in read_json(data_list)}
    records = load_obj_part_sem_seg(image_root, gt_root, dataset=dataset, layout=layout, command=command)
    return [r for r in records if os.path.basename(r["file_name"]) in keep]
