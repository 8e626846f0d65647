"""CAT-Seg's semantic-segmentation benchmarks: ``load_sem_seg`` records with layout-aware errors.

Every set is one record per image having a GT file: ``{"file_name", "sem_seg_file_name"}``, matched by
file stem and sorted (the intersection of the image and GT folders, as detectron2 does: VOC and Pascal
Context share ``JPEGImages`` with thousands of images that have no GT in the evaluated split).
Paths and GT extensions come from the catalog metadata (``image_root``, ``sem_seg_root``, ``gt_ext``).
"""
from __future__ import annotations

from typing import Any

from .common import load_sem_seg

__all__ = ["SEMANTIC_LAYOUTS", "load_semantic"]

# dataset name -> (printable name, expected layout, preparation command)
_PREP = "python tools/prepare_catseg_datasets.py {} --root $DETECTRON2_DATASETS"
SEMANTIC_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "coco_2017_train_stuff_all_sem_seg": ("COCO-Stuff-171 train", """\
coco-stuff/
  images/{train2017,val2017}/*.jpg
  annotations/{train2017,val2017}/*.png            (stuffthingmaps_trainval2017.zip)
  annotations_detectron2/{train2017,val2017}/*.png (generated)""", _PREP.format("coco-stuff")),
    "coco_2017_test_stuff_all_sem_seg": ("COCO-Stuff-171 val", """\
coco-stuff/
  images/val2017/*.jpg
  annotations/val2017/*.png                        (stuffthingmaps_trainval2017.zip)
  annotations_detectron2/val2017/*.png             (generated)""", _PREP.format("coco-stuff")),
    "ade20k_150_test_sem_seg": ("ADE20K-150", """\
ADEChallengeData2016/
  images/validation/*.jpg
  annotations/validation/*.png
  annotations_detectron2/validation/*.png          (generated)""", _PREP.format("ade150")),
    "ade20k_full_sem_seg_freq_val_all": ("ADE20K-847", """\
ADE20K_2021_17_01/
  images/ADE/validation/...                         (+ index_ade20k.pkl)
  images_detectron2/validation/*.jpg               (generated)
  annotations_detectron2/validation/*.tif          (generated)""", _PREP.format("ade847")),
    "voc_2012_test_sem_seg": ("PASCAL VOC-20", """\
VOCdevkit/VOC2012/
  JPEGImages/*.jpg
  ImageSets/Segmentation/val.txt
  SegmentationClassAug/*.png
  annotations_detectron2/val/*.png                 (generated)""", _PREP.format("voc")),
    "voc_2012_test_background_sem_seg": ("PASCAL VOC-20b", """\
VOCdevkit/VOC2012/
  JPEGImages/*.jpg
  ImageSets/Segmentation/val.txt
  SegmentationClassAug/*.png
  annotations_detectron2_bg/val/*.png              (generated)""", _PREP.format("voc")),
    "context_59_test_sem_seg": ("PASCAL Context-59", """\
VOCdevkit/VOC2010/
  JPEGImages/*.jpg
  trainval_merged.json
  annotations_detectron2/pc59_val/*.png            (generated)""", _PREP.format("pc59")),
    "context_459_test_sem_seg": ("PASCAL Context-459", """\
VOCdevkit/VOC2010/
  JPEGImages/*.jpg
  trainval/*.mat
  pascalcontext_val.txt
  annotations_detectron2/pc459_val/*.tif           (generated)""", _PREP.format("pc459")),
}


def load_semantic(name: str, image_root: str, gt_root: str, gt_ext: str, image_ext: str = "jpg") -> list[dict[str, Any]]:
    """Records of the CAT-Seg benchmark ``name`` (a key of ``SEMANTIC_LAYOUTS``)."""
    title, layout, command = SEMANTIC_LAYOUTS[name]
    return load_sem_seg(gt_root, image_root, gt_ext, image_ext, dataset=title, layout=layout, command=command)
