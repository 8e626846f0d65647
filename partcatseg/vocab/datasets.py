"""Class lists of the benchmark datasets, defined once (data files in ``partcatseg/vocab/data``).

Part datasets (PartCATSeg / OV-PARTS): the ``"<object>'s <part>"`` names in dataset order (= label ids
of the annotation PNGs), the object list (= object label ids), the novel objects, and everything the
official registration files derive from them (base classes = all parts of non-novel objects, etc.).
Semantic datasets (CAT-Seg): the exact JSON lists CAT-Seg feeds to CLIP, synonyms and the trailing
space of ADE-150's ``"bed "`` included.

Public API:
    PART_DATASETS, SYNTHETIC_PART_DATASETS, PartDatasetClasses, get_part_dataset(key)
    SEMANTIC_VOCABULARIES, get_semantic_classes(key), coco_stuff_dataset_ids()
    load_class_json(path_or_key)   a JSON list of class names (config ``*_CLASS_JSON`` values)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .vocabulary import split_part_name

_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

PART_DATASETS: tuple[str, ...] = ("pascal_part_116", "ade_part_234", "partimagenet", "partimagenet_ood")
# Vocabularies of generated datasets (not benchmarks): same file format, accepted by get_part_dataset.
SYNTHETIC_PART_DATASETS: tuple[str, ...] = ("toy_part",)

# key -> packaged file; the official CAT-Seg file names are accepted as aliases by load_class_json.
SEMANTIC_VOCABULARIES: dict[str, str] = {
    "coco_stuff_171": "coco_stuff_171.json",  # CAT-Seg datasets/coco.json
    "ade150": "ade150.json",
    "ade847": "ade847.json",
    "pc59": "pc59.json",
    "pc459": "pc459.json",
    "voc20": "voc20.json",
    "voc20b": "voc20b.json",
}
_OFFICIAL_JSON_NAMES: dict[str, str] = {
    "coco.json": "coco_stuff_171",
    **{f"{k}.json": k for k in SEMANTIC_VOCABULARIES if k != "coco_stuff_171"},
}

_PART_IGNORE_LABEL = {"pascal_part_116": 255, "toy_part": 255}  # 16-bit annotations elsewhere -> 65535


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_name_list(names: Any, where: str) -> list[str]:
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where}: expected a non-empty JSON list of class-name strings, got {type(names).__name__}")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"{where}: entry #{i} must be a non-empty string, got {n!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{where}: duplicate class names {duplicates}")
    return list(names)


def _object_of(name: str) -> str:
    return split_part_name(name)[0]


@dataclass(frozen=True)
class PartDatasetClasses:
    """All class-name lists of one part-segmentation dataset (mirrors the official module constants)."""

    key: str
    class_names: tuple[str, ...]  # CLASS_NAMES, label-id order
    obj_classes: tuple[str, ...]  # OBJ_CLASS_NAMES, object label-id order
    novel_obj_classes: tuple[str, ...]  # OBJ_NOVEL_CLASS_NAMES (official order)
    part_classes: tuple[str, ...]  # PART_CLASS_NAMES = sorted unique parts
    part_base_classes: tuple[str, ...]  # PART_BASE_CLASS_NAMES (unused by the model)
    part_categories: tuple[str, ...]  # PartImageNet's 40 raw part categories ("Quadruped Head"), else ()
    ignore_label: int

    @property
    def base_class_names(self) -> list[str]:
        """BASE_CLASS_NAMES: every part of every non-novel object, in dataset order."""
        return [c for c in self.class_names if _object_of(c) not in self.novel_obj_classes]

    @property
    def obj_base_classes(self) -> list[str]:
        return [o for o in self.obj_classes if o not in self.novel_obj_classes]

    @property
    def obj_eval_classes(self) -> list[str]:
        """Objects that have at least one part class, in object-id order."""
        with_parts = {_object_of(c).strip() for c in self.class_names}
        return [o for o in self.obj_classes if o in with_parts]

    @property
    def obj_eval_base_classes(self) -> list[str]:
        return [o for o in self.obj_eval_classes if o not in self.novel_obj_classes]

    @property
    def base_class_indices(self) -> list[int]:
        """Indices of the base classes in ``class_names`` (metadata ``evaluation_set["base"]``)."""
        return [i for i, c in enumerate(self.class_names) if _object_of(c) not in self.novel_obj_classes]

    @property
    def obj_map(self) -> dict[int, int]:
        """Full object id -> base object id (ids of novel objects are absent)."""
        base = self.obj_base_classes
        return {self.obj_classes.index(o): i for i, o in enumerate(base)}

    @property
    def obj_part_map(self) -> dict[int, int]:
        """Full class id -> base class id (ids of novel classes are absent)."""
        return {full: i for i, full in enumerate(self.base_class_indices)}


@lru_cache(maxsize=None)
def get_part_dataset(key: str) -> PartDatasetClasses:
    """Class lists of one part dataset; ``key`` is one of ``PART_DATASETS`` or ``SYNTHETIC_PART_DATASETS``."""
    if key not in PART_DATASETS and key not in SYNTHETIC_PART_DATASETS:
        raise KeyError(
            f"Unknown part dataset {key!r}; expected one of {list(PART_DATASETS) + list(SYNTHETIC_PART_DATASETS)}"
        )
    path = os.path.join(_DATA_DIR, f"{key}.json")
    raw = _read_json(path)
    classes = _check_name_list(raw["class_names"], f"{path}: class_names")
    objects = _check_name_list(raw["obj_classes"], f"{path}: obj_classes")
    novel = list(raw["novel_obj_classes"])
    unknown = [o for o in novel if o not in objects]
    if unknown:
        raise ValueError(f"{path}: novel objects {unknown} are not in obj_classes")
    parts = sorted({split_part_name(c)[1] for c in classes})
    if "part_base_classes_exclude" in raw:  # Pascal: the official list just drops "chainwheel"
        part_base = [p for p in parts if p not in raw["part_base_classes_exclude"]]
    else:
        part_base = sorted({split_part_name(c)[1] for c in classes if _object_of(c) not in novel})
    return PartDatasetClasses(
        key=key,
        class_names=tuple(classes),
        obj_classes=tuple(objects),
        novel_obj_classes=tuple(novel),
        part_classes=tuple(parts),
        part_base_classes=tuple(part_base),
        part_categories=tuple(raw.get("part_categories", ())),
        ignore_label=_PART_IGNORE_LABEL.get(key, 65535),
    )


@lru_cache(maxsize=None)
def _semantic(key: str) -> tuple[str, ...]:
    path = os.path.join(_DATA_DIR, SEMANTIC_VOCABULARIES[key])
    return tuple(_check_name_list(_read_json(path), path))


def get_semantic_classes(key: str) -> list[str]:
    """Exact CAT-Seg class-name list for ``key`` in ``SEMANTIC_VOCABULARIES`` (a fresh list)."""
    if key not in SEMANTIC_VOCABULARIES:
        raise KeyError(f"Unknown semantic vocabulary {key!r}; expected one of {list(SEMANTIC_VOCABULARIES)}")
    return list(_semantic(key))


def coco_stuff_dataset_ids() -> list[int]:
    """Original COCO category ids (1..182 with gaps) of the 171 COCO-Stuff classes, in class order."""
    ids = _read_json(os.path.join(_DATA_DIR, "coco_stuff_171_ids.json"))
    return [int(i) for i in ids]


def load_class_json(path_or_key: str) -> list[str]:
    """Load a JSON list of class names.

    Accepts a packaged vocabulary key (``"ade150"``), an existing file, or an official CAT-Seg path
    such as ``"datasets/coco.json"``: when that file does not exist, the packaged copy of the file
    with the same name is used, so official configs work without the CAT-Seg ``datasets/`` folder.
    """
    if path_or_key in SEMANTIC_VOCABULARIES:
        return get_semantic_classes(path_or_key)
    if os.path.isfile(path_or_key):
        return _check_name_list(_read_json(path_or_key), path_or_key)
    alias = _OFFICIAL_JSON_NAMES.get(os.path.basename(path_or_key))
    if alias is not None:
        return get_semantic_classes(alias)
    raise FileNotFoundError(
        f"Class-name JSON {path_or_key!r} not found; give an existing file, a packaged key "
        f"{list(SEMANTIC_VOCABULARIES)} or one of the official names {list(_OFFICIAL_JSON_NAMES)}"
    )
