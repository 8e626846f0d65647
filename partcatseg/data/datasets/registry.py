"""Registers the dataset loaders in ``DatasetCatalog`` under the official names (and the toy names).

Imported at the end of ``partcatseg.data.catalog``, so ``DatasetCatalog.get("voc_obj_part_sem_seg_val")``
works as soon as the catalog is imported (detectron2 projects register at import time too). Each loader
reads its paths from the dataset's metadata when called, so re-rooting the metadata re-roots the loader:

    from partcatseg.data.datasets import dataset_root
    with dataset_root("/tmp/fake"):            # tests, or a second copy of the data
        records = DatasetCatalog.get("toy_obj_part_sem_seg_val")

The root is fixed when the catalog is imported (``$DETECTRON2_DATASETS``, default ``datasets``), as in
detectron2; ``set_dataset_root`` / ``dataset_root`` change it later.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, Optional

from partcatseg.data.catalog import (
    PART_DATASET_NAMES,
    SEMANTIC_DATASET_NAMES,
    TOY_DATASET_NAMES,
    DatasetCatalog,
    MetadataCatalog,
    register_all_metadata,
)

from . import ade_part, partimagenet, pascal_part, semantic, toy

__all__ = [
    "BUILTIN_DATASET_NAMES",
    "DATASET_LOADERS",
    "register_all_loaders",
    "set_dataset_root",
    "dataset_root",
    "current_dataset_root",
]

BUILTIN_DATASET_NAMES: tuple[str, ...] = PART_DATASET_NAMES + TOY_DATASET_NAMES + SEMANTIC_DATASET_NAMES


def _meta(name: str):
    return MetadataCatalog.get(name)


def _dataset_dir(name: str) -> str:
    """``<root>/<Dataset>`` from the metadata ``image_root`` (every part layout is ``images/<split>``)."""
    return os.path.dirname(os.path.dirname(_meta(name).image_root))


# --------------------------------------------------------------------------- Pascal-style (Pascal, toy)
def _pascal_kwargs(name: str) -> dict[str, str]:
    if name.startswith("toy_"):
        return {"dataset": "ToyPart", "layout": toy.TOY_LAYOUT, "command": toy.toy_command(_dataset_dir(name))}
    return {"dataset": "Pascal-Part-116", "layout": pascal_part.PASCAL_LAYOUT, "command": pascal_part.PASCAL_COMMAND}


def _pascal_images(name: str) -> list[dict[str, Any]]:
    m = _meta(name)
    return pascal_part.load_obj_part_sem_seg(m.image_root, m.sem_seg_root, **_pascal_kwargs(name))


def _pascal_obj_condition(name: str) -> list[dict[str, Any]]:
    m = _meta(name)
    return pascal_part.load_obj_condition(m.image_root, m.sem_seg_root, **_pascal_kwargs(name))


def _pascal_few_shot(name: str) -> list[dict[str, Any]]:
    m = _meta(name)
    data_list = os.path.join(_dataset_dir(name), "train_16shot.json")
    return pascal_part.load_few_shot(m.image_root, m.sem_seg_root, data_list, **_pascal_kwargs(name))


# --------------------------------------------------------------------------- ADE20K-Part-234
def _load_ade(name: str, *, split: str, per_image: bool, few_shot: bool = False) -> list[dict[str, Any]]:
    d = _dataset_dir(name)
    data_list = os.path.join(d, "train_16shot.json") if few_shot else None
    return ade_part.load_ade_part(d, split, per_image=per_image, data_list=data_list)


def _load_ade_test(name: str, *, few_shot: bool) -> list[dict[str, Any]]:
    return ade_part.load_ade_part_test(_dataset_dir(name), few_shot=few_shot)


def _ade(split: str, per_image: bool, few_shot: bool = False) -> Callable[[str], list[dict[str, Any]]]:
    return functools.partial(_load_ade, split=split, per_image=per_image, few_shot=few_shot)


def _ade_test(few_shot: bool) -> Callable[[str], list[dict[str, Any]]]:
    return functools.partial(_load_ade_test, few_shot=few_shot)


# --------------------------------------------------------------------------- PartImageNet (+ OOD)
def _load_pin(name: str, *, key: str, split: str, per_image: bool) -> list[dict[str, Any]]:
    return partimagenet.load_partimagenet(_dataset_dir(name), split, key=key, per_image=per_image)


def _pin(key: str, split: str, per_image: bool) -> Callable[[str], list[dict[str, Any]]]:
    return functools.partial(_load_pin, key=key, split=split, per_image=per_image)


# --------------------------------------------------------------------------- CAT-Seg semantic sets
def _semantic(name: str) -> list[dict[str, Any]]:
    m = _meta(name)
    return semantic.load_semantic(name, m.image_root, m.sem_seg_root, m.gt_ext)


DATASET_LOADERS: dict[str, Callable[[str], list[dict[str, Any]]]] = {
    "voc_obj_part_sem_seg_train": _pascal_images,
    "voc_obj_part_sem_seg_val": _pascal_images,
    "voc_obj_part_sem_seg_train_obj_condition": _pascal_obj_condition,
    "voc_obj_part_sem_seg_val_obj_condition": _pascal_obj_condition,
    "voc_obj_part_sem_seg_train_few_shot": _pascal_few_shot,
    "toy_obj_part_sem_seg_train": _pascal_images,
    "toy_obj_part_sem_seg_val": _pascal_images,
    "toy_obj_part_sem_seg_train_obj_condition": _pascal_obj_condition,
    "toy_obj_part_sem_seg_val_obj_condition": _pascal_obj_condition,
    "ade_obj_part_sem_seg_train": _ade("train", per_image=True),
    "ade_obj_part_sem_seg_train_obj_condition": _ade("train", per_image=False),
    "ade_obj_part_sem_seg_train_few_shot": _ade("train", per_image=False, few_shot=True),
    "ade_obj_part_sem_seg_val_obj_condition": _ade_test(few_shot=False),
    "ade_obj_part_sem_seg_val_few_shot": _ade_test(few_shot=True),
    "partimagenet_obj_part_sem_seg_train": _pin("partimagenet", "train", per_image=True),
    "partimagenet_obj_part_sem_seg_train_obj_condition": _pin("partimagenet", "train", per_image=False),
    "partimagenet_obj_part_sem_seg_val": _pin("partimagenet", "val", per_image=True),
    "partimagenet_obj_part_sem_seg_val_obj_condition": _pin("partimagenet", "val", per_image=True),
    "partimagenet_ood_obj_part_sem_seg_train": _pin("partimagenet_ood", "train", per_image=True),
    "partimagenet_ood_obj_part_sem_seg_train_obj_condition": _pin("partimagenet_ood", "train", per_image=False),
    "partimagenet_ood_obj_part_sem_seg_val": _pin("partimagenet_ood", "val", per_image=True),
    "partimagenet_ood_obj_part_sem_seg_val_obj_condition": _pin("partimagenet_ood", "val", per_image=True),
    **{n: _semantic for n in SEMANTIC_DATASET_NAMES},
}
_unmapped = set(BUILTIN_DATASET_NAMES) ^ set(DATASET_LOADERS)
if _unmapped:  # pragma: no cover - guards the two tables against drifting apart
    raise RuntimeError(f"Dataset names without a loader (or loaders without metadata): {sorted(_unmapped)}")


class _Loader:
    """Zero-argument callable bound to a dataset name (picklable and with a readable repr)."""

    def __init__(self, name: str, fn: Callable[[str], list[dict[str, Any]]]):
        self.name, self.fn = name, fn

    def __call__(self) -> list[dict[str, Any]]:
        return self.fn(self.name)

    def __repr__(self) -> str:
        return f"<partcatseg loader of '{self.name}'>"


_current_root: str = os.getenv("DETECTRON2_DATASETS", "datasets")


def register_all_loaders() -> None:
    """Register every built-in loader that is not registered yet (idempotent)."""
    for name, fn in DATASET_LOADERS.items():
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, _Loader(name, fn))


def current_dataset_root() -> str:
    """The root the built-in metadata (and hence the loaders) currently point to."""
    return _current_root


def set_dataset_root(root: Optional[str] = None) -> str:
    """Point every built-in dataset at ``root`` (default ``$DETECTRON2_DATASETS``); returns the previous root.

    The built-in ``Metadata`` objects are replaced (``Metadata`` refuses in-place changes), so references
    taken before the call keep the old paths.
    """
    global _current_root
    root = root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")
    previous = _current_root
    if root == previous:
        return previous
    for name in BUILTIN_DATASET_NAMES:
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
    register_all_metadata(root)
    _current_root = root
    register_all_loaders()
    return previous


@contextlib.contextmanager
def dataset_root(root: str) -> Iterator[str]:
    """Temporarily point the built-in datasets at ``root`` (restores the previous root on exit)."""
    previous = set_dataset_root(root)
    try:
        yield root
    finally:
        set_dataset_root(previous)


register_all_loaders()
