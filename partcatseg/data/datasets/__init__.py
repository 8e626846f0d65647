"""Dataset loaders (one module per family), preparation logic and the loader registry.

* ``pascal_part``   Pascal-Part-116 (and the toy set, same layout)
* ``ade_part``      ADE20K-Part-234
* ``partimagenet``  PartImageNet (Seg) / PartImageNet-OOD, ImageNet synset table;
  ``partimagenet_prepare`` the official preprocessing
* ``semantic``      CAT-Seg's semantic benchmarks; ``semantic_prepare`` their GT conversions
* ``toy``           the synthetic toy part dataset generator
* ``common``        listing, ``load_sem_seg``, COCO json parsing, label counting
* ``registry``      official names -> loaders in ``DatasetCatalog``; ``set_dataset_root`` / ``dataset_root``
* ``check``         validation of a registered split (``tools/check_dataset.py``)
"""
from .common import DatasetFilesError, collect_mask_labels, load_coco_instances, load_sem_seg
from .partimagenet import imagenet_synset_names, object_class_id, synset_of
from .registry import (
    BUILTIN_DATASET_NAMES,
    current_dataset_root,
    dataset_root,
    register_all_loaders,
    set_dataset_root,
)
from .toy import make_toy_dataset

__all__ = [
    "DatasetFilesError",
    "collect_mask_labels",
    "load_coco_instances",
    "load_sem_seg",
    "imagenet_synset_names",
    "object_class_id",
    "synset_of",
    "BUILTIN_DATASET_NAMES",
    "current_dataset_root",
    "dataset_root",
    "register_all_loaders",
    "set_dataset_root",
    "make_toy_dataset",
]
