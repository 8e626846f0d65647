"""detectron2-compatible dataset and metadata catalogs, with every official dataset's metadata.

detectron2 cannot be installed here, but the official code (and users' habits) revolve around
``DatasetCatalog.register(name, func)`` and ``MetadataCatalog.get(name).stuff_classes``. This module
offers the same two global objects with the same semantics:

* ``DatasetCatalog``: ``register(name, func)`` (error if the name exists), ``get(name)`` calls ``func()``
  (``KeyError`` listing the registered names), ``list()``, ``remove(name)``, ``clear()``.
* ``MetadataCatalog``: ``get(name)`` returns the ``Metadata`` of ``name``, creating an empty one on first
  use; ``list()``, ``remove(name)``, ``clear()``.
* ``Metadata``: attribute access; ``set(**kw)`` returns itself; ``get(key, default)``; ``as_dict()``.
  Re-setting an attribute to a *different* value raises ``ValueError`` (a silent change of, say,
  ``stuff_classes`` would corrupt label ids); an unknown attribute raises ``AttributeError`` naming the
  attribute and the dataset.

The metadata of the official part datasets (PartCATSeg / OV-PARTS names), of CAT-Seg's semantic
benchmarks and of the synthetic toy part dataset (``toy_obj_part_sem_seg_*``, root ``ToyPart``) is
registered when this module is imported (``register_all_metadata``, idempotent), from the split table
and class lists of :mod:`partcatseg.vocab`. Paths are resolved under ``$DETECTRON2_DATASETS`` (default
``datasets``) at that moment. The dataset loaders of the same names are registered in ``DatasetCatalog``
by ``partcatseg.data.datasets.registry``, which importing ``partcatseg.data`` (any of its modules)
imports; they read ``image_root`` / ``sem_seg_root`` from the metadata when called, so
``partcatseg.data.datasets.set_dataset_root(root)`` re-roots metadata and loaders together. Datasets you
register here by metadata (``stuff_classes``, ``obj_classes``) give models their vocabulary through
:func:`partcatseg.vocab.dataset_vocabulary`.

Differences from the official registrations (documented, no effect on the model or the metrics):
``obj_eval_classes`` / ``obj_eval_base_classes`` / ``obj_evaluation_set`` are provided for every part
dataset (officially Pascal/ADE only); ``partimagenet*_train_obj_condition`` gets the base lists like
every training split (the official ``if name == 'train'`` test never matches there); ``sem_seg_root``
points at the annotation folder (officially misspelt ``seg_seg_root`` or equal to the image folder);
``gt_ext`` is added for semantic sets; colour lists are not provided.

Public API: ``DatasetCatalog``, ``MetadataCatalog``, ``Metadata``, ``register_all_metadata(root=None)``,
``dataset_vocabulary_key(dataset_name)`` (from :mod:`partcatseg.vocab`), ``PART_DATASET_NAMES``,
``SEMANTIC_DATASET_NAMES``, ``TOY_DATASET_NAMES``.
"""
from __future__ import annotations

import os
from collections import UserDict
from typing import Any, Callable, Optional

import numpy as np

from partcatseg.vocab import (
    PART_DATASET_NAMES,
    SEMANTIC_DATASET_NAMES,
    TOY_DATASET_NAMES,
    PartDatasetClasses,
    Vocabulary,
    coco_stuff_dataset_ids,
    dataset_vocabulary_key,
    get_part_dataset,
    get_semantic_classes,
    register_vocabulary_provider,
)
from partcatseg.vocab.registry import PART_SPLITS, SEMANTIC_SPLITS, TOY_SPLITS

__all__ = [
    "DatasetCatalog",
    "MetadataCatalog",
    "Metadata",
    "register_all_metadata",
    "dataset_vocabulary_key",
    "PART_DATASET_NAMES",
    "SEMANTIC_DATASET_NAMES",
    "TOY_DATASET_NAMES",
]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except ValueError:  # numpy arrays: elementwise == is ambiguous as a bool
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


class Metadata:
    """Read-mostly attribute bag describing one dataset (detectron2 ``Metadata`` semantics)."""

    def __init__(self, name: str = "N/A", **kwargs: Any):
        object.__setattr__(self, "name", name)
        self.set(**kwargs)

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails, i.e. the attribute was never set.
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(key)  # keep copy/pickle protocols working
        name = self.__dict__.get("name", "N/A")
        raise AttributeError(
            f"Attribute '{key}' does not exist in the metadata of dataset '{name}'. "
            f"Available keys are {sorted(self.__dict__)}."
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ and not _same(self.__dict__[key], value):
            raise ValueError(
                f"Attribute '{key}' of the metadata of dataset '{self.__dict__.get('name')}' is already set "
                f"to a different value (old: {self.__dict__[key]!r:.200}, new: {value!r:.200})"
            )
        object.__setattr__(self, key, value)

    def set(self, **kwargs: Any) -> "Metadata":
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Metadata(name={self.__dict__.get('name')!r}, keys={sorted(self.__dict__)})"


class _DatasetCatalog(UserDict):
    """name -> zero-argument function returning ``list[dict]`` (called on every ``get``)."""

    def register(self, name: str, func: Callable[[], list]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Dataset name must be a non-empty string, got {name!r}")
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', func): func must be callable, got {func!r}")
        if name in self.data:
            raise ValueError(f"Dataset '{name}' is already registered!")
        self.data[name] = func

    def get(self, name: str) -> list:  # type: ignore[override]
        try:
            func = self.data[name]
        except KeyError:
            raise KeyError(
                f"Dataset '{name}' is not registered! Available datasets are: {', '.join(self.list()) or '(none)'}"
            ) from None
        return func()

    def list(self) -> list[str]:
        return list(self.data.keys())

    def remove(self, name: str) -> None:
        if name not in self.data:
            raise KeyError(f"Dataset '{name}' is not registered! Available datasets are: {', '.join(self.list())}")
        del self.data[name]

    def __str__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.list())})"

    __repr__ = __str__


class _MetadataCatalog(UserDict):
    """name -> ``Metadata``; ``get`` creates an empty ``Metadata`` for a new name (as detectron2 does)."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        if not isinstance(name, str) or not name:
            raise ValueError(f"Dataset name must be a non-empty string, got {name!r}")
        meta = self.data.get(name)
        if meta is None:
            meta = self.data[name] = Metadata(name=name)
        return meta

    def list(self) -> list[str]:
        return list(self.data.keys())

    def remove(self, name: str) -> None:
        if name not in self.data:
            raise KeyError(f"No metadata for dataset '{name}'. Known: {', '.join(self.list())}")
        del self.data[name]

    def __str__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.list())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()


# ----------------------------------------------------------------------------------------------------
# Official dataset metadata
# ----------------------------------------------------------------------------------------------------
# vocabulary key -> (dataset folder, {split: (image dir, annotation dir)})
_PART_LAYOUT: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "pascal_part_116": ("PascalPart116", {
        "train": ("images/train", "annotations_detectron2_part/train"),
        "val": ("images/val", "annotations_detectron2_part/val"),
    }),
    "ade_part_234": ("ADE20KPart234", {
        "train": ("images/training", "annotations_detectron2_part/training"),
        "val": ("images/validation", "annotations_detectron2_part/validation"),
    }),
    "partimagenet": ("PartImageNet", {
        "train": ("images/train", "annotations/train"),
        "val": ("images/val", "annotations/val"),
    }),
    "partimagenet_ood": ("PartImageNet_OOD", {
        "train": ("images/train", "annotations/train"),
        "val": ("images/val", "annotations/val"),
    }),
    "toy_part": ("ToyPart", {  # Pascal-Part-116 layout (tools/make_toy_dataset.py)
        "train": ("images/train", "annotations_detectron2_part/train"),
        "val": ("images/val", "annotations_detectron2_part/val"),
    }),
}

# CAT-Seg semantic sets: name -> (image dir, annotation dir, gt_ext, ignore_label, evaluator_type).
_COCO, _ADE, _ADE_FULL = "coco-stuff", "ADEChallengeData2016", "ADE20K_2021_17_01"
_VOC12, _VOC10 = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010"
_SEMANTIC_LAYOUT: dict[str, tuple[str, str, str, int, str]] = {
    "coco_2017_train_stuff_all_sem_seg": (f"{_COCO}/images/train2017", f"{_COCO}/annotations_detectron2/train2017",
                                          "png", 255, "sem_seg"),
    "coco_2017_test_stuff_all_sem_seg": (f"{_COCO}/images/val2017", f"{_COCO}/annotations_detectron2/val2017",
                                         "png", 255, "sem_seg"),
    "ade20k_150_test_sem_seg": (f"{_ADE}/images/validation", f"{_ADE}/annotations_detectron2/validation",
                                "png", 255, "sem_seg"),
    "ade20k_full_sem_seg_freq_val_all": (f"{_ADE_FULL}/images_detectron2/validation",
                                         f"{_ADE_FULL}/annotations_detectron2/validation", "tif", 65535, "sem_seg"),
    "voc_2012_test_sem_seg": (f"{_VOC12}/JPEGImages", f"{_VOC12}/annotations_detectron2/val", "png", 255, "sem_seg"),
    "voc_2012_test_background_sem_seg": (f"{_VOC12}/JPEGImages", f"{_VOC12}/annotations_detectron2_bg/val",
                                         "png", 255, "sem_seg_background"),
    "context_59_test_sem_seg": (f"{_VOC10}/JPEGImages", f"{_VOC10}/annotations_detectron2/pc59_val",
                                "png", 255, "sem_seg"),
    "context_459_test_sem_seg": (f"{_VOC10}/JPEGImages", f"{_VOC10}/annotations_detectron2/pc459_val",
                                 "tif", 459, "sem_seg"),
}
if set(_SEMANTIC_LAYOUT) != set(SEMANTIC_DATASET_NAMES):  # pragma: no cover - guards the two tables
    raise RuntimeError("partcatseg.data.catalog: semantic layouts and vocabulary splits disagree")


def _part_metadata(ds: PartDatasetClasses, kind: str, with_eval: bool) -> dict[str, Any]:
    full, base = list(ds.class_names), ds.base_class_names
    obj_eval, obj_eval_base = ds.obj_eval_classes, ds.obj_eval_base_classes
    meta: dict[str, Any] = {
        "stuff_classes": base if kind == "base" else full,
        "obj_classes": ds.obj_base_classes if kind == "base" else list(ds.obj_classes),
        "obj_base_classes": ds.obj_base_classes,
        "obj_eval_classes": obj_eval,
        "obj_eval_base_classes": obj_eval_base,
        "part_classes": list(ds.part_classes),
        "part_base_classes": list(ds.part_base_classes),
        "base_classes": base,
        "evaluator_type": "sem_seg",
        "ignore_label": ds.ignore_label,
    }
    if ds.part_categories:
        meta["part_categories"] = [
            {"id": i, "name": n, "supercategory": n.split(" ")[0]} for i, n in enumerate(ds.part_categories)
        ]
    if kind == "base":
        meta["obj_map"] = ds.obj_map
        meta["obj_part_map"] = ds.obj_part_map
    if with_eval and kind == "few_shot":
        meta["evaluation_set"] = {"base": list(range(len(full)))}
        meta["trainable_flag"] = [1] * len(full)
    elif with_eval:
        base_set = set(base)
        meta["evaluation_set"] = {"base": ds.base_class_indices}
        meta["obj_evaluation_set"] = {"base": [obj_eval.index(o) for o in obj_eval_base]}
        meta["trainable_flag"] = [1 if c in base_set else 0 for c in full]
    return meta


def register_all_metadata(root: str | None = None) -> None:
    """Register the metadata of every official dataset name (idempotent for an unchanged ``root``)."""
    root = root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")
    for split in PART_SPLITS + TOY_SPLITS:
        folder, splits = _PART_LAYOUT[split.key]
        image_dir, gt_dir = splits[split.split]
        meta = _part_metadata(get_part_dataset(split.key), split.kind, split.with_eval)
        MetadataCatalog.get(split.name).set(
            image_root=os.path.join(root, folder, image_dir),
            sem_seg_root=os.path.join(root, folder, gt_dir),
            **meta,
        )
    for split in SEMANTIC_SPLITS:
        image_dir, gt_dir, gt_ext, ignore_label, evaluator_type = _SEMANTIC_LAYOUT[split.name]
        classes = get_semantic_classes(split.key)
        extra: dict[str, Any] = {}
        if evaluator_type == "sem_seg_background":
            # PAS-20b: 20 VOC classes + "background" are scored; the model is queried with the
            # 59-name voc20b vocabulary and every prediction >= 20 counts as background.
            classes = classes + ["background"]
            extra["vocabulary"] = get_semantic_classes(split.query_key)
        if split.key == "coco_stuff_171":
            ids = coco_stuff_dataset_ids()
            extra["stuff_dataset_id_to_contiguous_id"] = {k: i for i, k in enumerate(ids)}
        MetadataCatalog.get(split.name).set(
            image_root=os.path.join(root, image_dir),
            sem_seg_root=os.path.join(root, gt_dir),
            gt_ext=gt_ext,
            evaluator_type=evaluator_type,
            ignore_label=ignore_label,
            stuff_classes=classes,
            **extra,
        )


def _metadata_vocabulary(dataset_name: str) -> Optional[Vocabulary]:
    """Vocabulary of a dataset registered by metadata only (the provider the vocab registry consults)."""
    if dataset_name not in MetadataCatalog:
        return None
    meta = MetadataCatalog.get(dataset_name)
    classes = meta.get("vocabulary") or meta.get("stuff_classes")
    if not classes:
        return None
    return Vocabulary(classes, meta.get("obj_classes"), name=dataset_name)


register_all_metadata()
register_vocabulary_provider(_metadata_vocabulary)
