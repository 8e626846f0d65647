"""PartImageNet (Seg) preparation: the official ``datasets/partimagenet_preprocess.py`` behaviour.

From the downloaded ``PartImageNet_Seg`` (renamed ``PartImageNet/``) it keeps only the images of the
40 selected objects (11 super-categories): **train keeps the 25 base objects, val all 40**. Other images
and annotation PNGs are deleted in place; ``annotations/{train,val}/{train,val}.json`` move to
``PartImageNet/{train,val}.json``; their ``images``/``annotations`` are filtered to the kept images
(that exist on disk) and ``categories`` is replaced by the obj-part class list (cosmetic: the annotation
``category_id`` stays the 0..39 part category; the official list lacks the killer whale's 4 classes, so
its ids skip 129-132 — reproduced).

The synset names come from ``LOC_synset_mapping.txt`` when given (official), else from the packaged
copy of the same first names (``imagenet_synset_names``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Optional

from partcatseg.vocab import get_part_dataset, split_part_name

from .partimagenet import imagenet_synset_names

logger = logging.getLogger(__name__)

__all__ = [
    "SUPERCLASS_OBJ_CLASSES",
    "SUPERCLASS_OBJ_NOVEL_CLASSES",
    "load_synset_mapping",
    "partimagenet_class_map",
    "preprocess_partimagenet",
]

# Official data (partimagenet_preprocess.py): objects per PartImageNet super-category.
SUPERCLASS_OBJ_CLASSES: dict[str, list[str]] = {
    "Quadruped": ["tiger", "giant panda", "leopard", "gazelle", "ice bear", "impala", "golden retriever"],
    "Snake": ["green mamba", "Indian cobra"],
    "Reptile": ["green lizard", "Komodo dragon", "tree frog", "box turtle", "American alligator"],
    "Boat": ["yawl", "pirate", "schooner"],
    "Fish": ["barracouta", "goldfish", "killer whale", "tench"],
    "Bird": ["albatross", "goose", "bald eagle"],
    "Car": ["garbage truck", "minibus", "ambulance", "jeep", "school bus"],
    "Bicycle": ["motor scooter", "mountain bike", "moped"],
    "Biped": ["gorilla", "orangutan", "chimpanzee"],
    "Bottle": ["beer bottle", "water bottle", "wine bottle"],
    "Aeroplane": ["warplane", "airliner"],
}
SUPERCLASS_OBJ_NOVEL_CLASSES: dict[str, list[str]] = {
    "Quadruped": ["ice bear", "impala", "golden retriever"],
    "Snake": ["Indian cobra"],
    "Reptile": ["box turtle", "American alligator"],
    "Boat": ["schooner"],
    "Fish": ["tench"],
    "Bird": ["bald eagle"],
    "Car": ["jeep", "school bus"],
    "Bicycle": ["motor scooter"],
    "Biped": ["chimpanzee"],
    "Bottle": ["wine bottle"],
    "Aeroplane": ["airliner"],
}
_CLASS_MAP_OMITTED_OBJECTS = ("killer whale",)  # absent from the official CLASS_MAP (ids 129-132)


def load_synset_mapping(path: Optional[str] = None) -> dict[str, str]:
    """Synset -> first name, from ``LOC_synset_mapping.txt`` ("n01440764 tench, Tinca tinca") or the packaged table."""
    if path is None:
        return imagenet_synset_names()
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            wnid, names = line.split(" ", 1)
            out[wnid] = names.split(",", 1)[0]
    return out


def partimagenet_class_map() -> list[dict[str, Any]]:
    """The ``categories`` written into the prepared jsons (official ``CLASS_MAP``)."""
    superclass = {o: s for s, objs in SUPERCLASS_OBJ_CLASSES.items() for o in objs}
    out = []
    for i, name in enumerate(get_part_dataset("partimagenet").class_names):
        obj = split_part_name(name)[0]
        if obj in _CLASS_MAP_OMITTED_OBJECTS:
            continue
        out.append({"id": i, "name": name, "superclass": superclass[obj]})
    return out


def _object_synsets(id2name: dict[str, str]) -> tuple[set[str], set[str]]:
    objects = [o for objs in SUPERCLASS_OBJ_CLASSES.values() for o in objs]
    novel = [o for objs in SUPERCLASS_OBJ_NOVEL_CLASSES.values() for o in objs]
    all_ids = {k for k, v in id2name.items() if v in objects}
    novel_ids = {k for k, v in id2name.items() if v in novel}
    return all_ids, all_ids - novel_ids


def _clean_split(data_dir: str, split: str, valid: set[str], dry_run: bool) -> dict[str, int]:
    image_dir = os.path.join(data_dir, "images", split)
    anno_dir = os.path.join(data_dir, "annotations", split)
    stats = {"images_kept": 0, "images_removed": 0, "annotations_removed": 0}
    for d in (image_dir, anno_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(
                f"PartImageNet: expected directory '{d}' (layout: {data_dir}/images/{{train,val}}, "
                f"{data_dir}/annotations/{{train,val}} with {{train,val}}.json inside)"
            )
    for name in sorted(os.listdir(image_dir)):
        if name.split("_")[0] in valid:
            stats["images_kept"] += 1
            continue
        stats["images_removed"] += 1
        if not dry_run:
            os.remove(os.path.join(image_dir, name))
    for name in sorted(os.listdir(anno_dir)):
        if name in ("train.json", "val.json"):
            if not dry_run:
                shutil.move(os.path.join(anno_dir, name), os.path.join(data_dir, name))
        elif name.split("_")[0] not in valid:
            stats["annotations_removed"] += 1
            if not dry_run:
                os.remove(os.path.join(anno_dir, name))
    return stats


def _filter_json(json_path: str, valid: set[str], image_dir: str) -> dict[str, int]:
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    images = [im for im in data["images"]
              if im["file_name"].split("_", 1)[0] in valid and os.path.exists(os.path.join(image_dir, im["file_name"]))]
    ids = {im["id"] for im in images}
    annotations = [a for a in data["annotations"] if a["image_id"] in ids]
    data["images"], data["annotations"], data["categories"] = images, annotations, partimagenet_class_map()
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return {"json_images": len(images), "json_annotations": len(annotations)}


def preprocess_partimagenet(
    data_dir: str, synset_mapping: Optional[str] = None, *, dry_run: bool = False
) -> dict[str, dict[str, int]]:
    """Prepare ``data_dir`` (the extracted ``PartImageNet_Seg``) in place; returns per-split counts.

    ``dry_run`` only counts what would be removed (jsons untouched). Running it twice is harmless.
    """
    id2name = load_synset_mapping(synset_mapping)
    all_ids, base_ids = _object_synsets(id2name)
    if len(all_ids) != 40 or len(base_ids) != 25:
        raise ValueError(
            f"The synset mapping gives {len(all_ids)} object synsets ({len(base_ids)} base); expected 40 (25). "
            f"Is '{synset_mapping}' the ImageNet LOC_synset_mapping.txt?"
        )
    report: dict[str, dict[str, int]] = {}
    for split, valid in (("train", base_ids), ("val", all_ids)):
        report[split] = _clean_split(data_dir, split, valid, dry_run)
    for split, valid in (("train", base_ids), ("val", all_ids)):
        json_path = os.path.join(data_dir, f"{split}.json")
        if dry_run:
            continue
        if not os.path.isfile(json_path):
            raise FileNotFoundError(f"PartImageNet: '{json_path}' not found (expected annotations/{split}/{split}.json "
                                    f"in the download)")
        report[split].update(_filter_json(json_path, valid, os.path.join(data_dir, "images", split)))
        logger.info("PartImageNet %s: %s", split, report[split])
    return report
