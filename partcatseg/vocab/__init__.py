"""Vocabulary: the only place that knows class names, dataset splits and prompt templates.

* ``vocabulary`` – :class:`Vocabulary`, the one vocabulary type (class names, the object list that
  Oracle-Obj indexes, and for parts the generalized parts / objects derived from "obj's part" names),
  the official label maps and the Oracle-Obj substring rule.
* ``datasets``   – class lists of the part datasets (Pascal-Part-116, ADE20K-Part-234, PartImageNet,
  PartImageNet-OOD, the toy set) and CAT-Seg's semantic vocabularies (COCO-Stuff-171, A-150, ...).
* ``registry``   – official dataset names -> their split and vocabulary (:func:`dataset_vocabulary`).
* ``parse``      – a user's vocabulary in any written form -> :class:`Vocabulary`.
* ``templates``  – CLIP prompt templates (``get_templates("imagenet")`` -> the 80 OpenAI templates).
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
from .parse import TASKS, VocabularyError, parse_class_list, parse_object_parts, resolve_vocabulary
from .registry import (
    PART_DATASET_NAMES,
    SEMANTIC_DATASET_NAMES,
    TOY_DATASET_NAMES,
    DatasetSplit,
    dataset_ignore_label,
    dataset_split,
    dataset_vocabulary,
    dataset_vocabulary_key,
    register_dataset_vocabulary,
    register_vocabulary_provider,
)
from .templates import (
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    SINGLE_TEMPLATE,
    TEMPLATE_KINDS,
    get_templates,
)
from .vocabulary import SEP, LabelMaps, Vocabulary, label_maps, oracle_class_mask, split_part_name

__all__ = [
    "Vocabulary",
    "VocabularyError",
    "TASKS",
    "SEP",
    "split_part_name",
    "LabelMaps",
    "label_maps",
    "oracle_class_mask",
    "parse_object_parts",
    "parse_class_list",
    "resolve_vocabulary",
    "DatasetSplit",
    "PART_DATASET_NAMES",
    "TOY_DATASET_NAMES",
    "SEMANTIC_DATASET_NAMES",
    "dataset_split",
    "dataset_vocabulary",
    "dataset_ignore_label",
    "dataset_vocabulary_key",
    "register_dataset_vocabulary",
    "register_vocabulary_provider",
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
    "coco_stuff_dataset_ids",
]
