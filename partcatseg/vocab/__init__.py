"""Vocabulary: the only place that knows class names, base/novel splits and prompt templates.

* ``templates``  – CLIP prompt templates (``get_templates("imagenet")`` -> the 80 OpenAI templates).
* ``datasets``   – official class lists of the part datasets (Pascal-Part-116, ADE20K-Part-234,
  PartImageNet, PartImageNet-OOD) and CAT-Seg's semantic vocabularies (COCO-Stuff-171, A-150, A-847,
  PC-59, PC-459, PAS-20, PAS-20b).
* ``parts``      – ``PartVocabulary`` (generalized parts / objects derived from "obj's part" names),
  the official label maps and the Oracle-Obj substring rule.

Dataset *names* (``voc_obj_part_sem_seg_train`` ...) live in ``partcatseg.data.catalog``; use
``part_vocabulary_for(name)`` (defined in ``partcatseg.data.catalog``, re-exported here) to get the vocabulary of a registered split.
"""
from .datasets import (
    PART_DATASETS,
    SEMANTIC_VOCABULARIES,
    SYNTHETIC_PART_DATASETS,
    PartDatasetClasses,
    coco_stuff_dataset_ids,
    get_part_dataset,
    get_semantic_classes,
    load_class_json,
)
from .parts import LabelMaps, PartVocabulary, label_maps, oracle_class_mask, parse_object_parts
from .templates import (
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    SINGLE_TEMPLATE,
    TEMPLATE_KINDS,
    get_templates,
)

__all__ = [
    "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_SELECT",
    "SINGLE_TEMPLATE",
    "TEMPLATE_KINDS",
    "get_templates",
    "PART_DATASETS",
    "SYNTHETIC_PART_DATASETS",
    "SEMANTIC_VOCABULARIES",
    "PartDatasetClasses",
    "get_part_dataset",
    "get_semantic_classes",
    "load_class_json",
    "PartVocabulary",
    "LabelMaps",
    "label_maps",
    "oracle_class_mask",
    "parse_object_parts",
    "coco_stuff_dataset_ids",
    "part_vocabulary_for",
]


def __getattr__(name: str):
    # part_vocabulary_for lives with the dataset names in partcatseg.data.catalog; importing it
    # lazily keeps vocab free of a data -> vocab -> data import cycle.
    if name == "part_vocabulary_for":
        from partcatseg.data.catalog import part_vocabulary_for

        return part_vocabulary_for
    raise AttributeError(f"module 'partcatseg.vocab' has no attribute {name!r}")
