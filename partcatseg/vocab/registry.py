"""Dataset names -> vocabularies: the official split names and the classes a model sees on each.

The dataset catalog (``partcatseg.data.catalog``) builds its metadata from this table, and models get
their training / test vocabularies from :func:`dataset_vocabulary`, so a model never needs the data
layer. A dataset you register yourself gets its vocabulary from a provider: the data catalog installs
one that reads ``MetadataCatalog.get(name).stuff_classes`` / ``obj_classes``; or call
:func:`register_dataset_vocabulary` directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from .datasets import get_part_dataset, get_semantic_classes
from .vocabulary import Vocabulary

__all__ = [
    "DatasetSplit",
    "PART_SPLITS",
    "TOY_SPLITS",
    "SEMANTIC_SPLITS",
    "PART_DATASET_NAMES",
    "TOY_DATASET_NAMES",
    "SEMANTIC_DATASET_NAMES",
    "dataset_split",
    "dataset_vocabulary_key",
    "dataset_vocabulary",
    "dataset_ignore_label",
    "register_dataset_vocabulary",
    "register_vocabulary_provider",
]


@dataclass(frozen=True)
class DatasetSplit:
    """One registered split: its vocabulary key and which classes it uses.

    ``kind``: "base" (training split: base classes and base objects), "full" (test: every class),
    "few_shot" (every class, all counted as base), "semantic" (a CAT-Seg benchmark).
    ``with_eval``: the official registration attaches evaluation sets (seen/unseen) to it.
    ``query_key``: the vocabulary the model is queried with when it differs from the scored one
    (PAS-20b: the 59-name ``voc20b`` list is queried, 20 classes + background are scored).
    """

    name: str
    key: str
    split: str
    kind: str
    with_eval: bool = False
    query_key: str = ""


def _part(name: str, key: str, split: str, kind: str, with_eval: bool) -> DatasetSplit:
    return DatasetSplit(name, key, split, kind, with_eval)


# Mirrors the official registration files (PartCATSeg / OV-PARTS names).
PART_SPLITS: tuple[DatasetSplit, ...] = (
    _part("voc_obj_part_sem_seg_train", "pascal_part_116", "train", "base", True),
    _part("voc_obj_part_sem_seg_train_obj_condition", "pascal_part_116", "train", "base", True),
    _part("voc_obj_part_sem_seg_train_few_shot", "pascal_part_116", "train", "few_shot", True),
    _part("voc_obj_part_sem_seg_val", "pascal_part_116", "val", "full", True),
    _part("voc_obj_part_sem_seg_val_obj_condition", "pascal_part_116", "val", "full", True),
    _part("ade_obj_part_sem_seg_train", "ade_part_234", "train", "base", False),
    _part("ade_obj_part_sem_seg_train_obj_condition", "ade_part_234", "train", "base", True),
    _part("ade_obj_part_sem_seg_train_few_shot", "ade_part_234", "train", "few_shot", True),
    _part("ade_obj_part_sem_seg_val_obj_condition", "ade_part_234", "val", "full", True),
    _part("ade_obj_part_sem_seg_val_few_shot", "ade_part_234", "val", "few_shot", True),
    _part("partimagenet_obj_part_sem_seg_train", "partimagenet", "train", "base", False),
    _part("partimagenet_obj_part_sem_seg_train_obj_condition", "partimagenet", "train", "base", True),
    _part("partimagenet_obj_part_sem_seg_val", "partimagenet", "val", "full", False),
    _part("partimagenet_obj_part_sem_seg_val_obj_condition", "partimagenet", "val", "full", True),
    _part("partimagenet_ood_obj_part_sem_seg_train", "partimagenet_ood", "train", "base", False),
    _part("partimagenet_ood_obj_part_sem_seg_train_obj_condition", "partimagenet_ood", "train", "base", True),
    _part("partimagenet_ood_obj_part_sem_seg_val", "partimagenet_ood", "val", "full", False),
    _part("partimagenet_ood_obj_part_sem_seg_val_obj_condition", "partimagenet_ood", "val", "full", True),
)

# The synthetic toy part dataset (tools/make_toy_dataset.py), registered like Pascal-Part-116.
TOY_SPLITS: tuple[DatasetSplit, ...] = (
    _part("toy_obj_part_sem_seg_train", "toy_part", "train", "base", True),
    _part("toy_obj_part_sem_seg_train_obj_condition", "toy_part", "train", "base", True),
    _part("toy_obj_part_sem_seg_val", "toy_part", "val", "full", True),
    _part("toy_obj_part_sem_seg_val_obj_condition", "toy_part", "val", "full", True),
)

# CAT-Seg's semantic benchmarks.
SEMANTIC_SPLITS: tuple[DatasetSplit, ...] = (
    DatasetSplit("coco_2017_train_stuff_all_sem_seg", "coco_stuff_171", "train", "semantic"),
    DatasetSplit("coco_2017_test_stuff_all_sem_seg", "coco_stuff_171", "val", "semantic"),
    DatasetSplit("ade20k_150_test_sem_seg", "ade150", "val", "semantic"),
    DatasetSplit("ade20k_full_sem_seg_freq_val_all", "ade847", "val", "semantic"),
    DatasetSplit("voc_2012_test_sem_seg", "voc20", "val", "semantic"),
    DatasetSplit("voc_2012_test_background_sem_seg", "voc20", "val", "semantic", query_key="voc20b"),
    DatasetSplit("context_59_test_sem_seg", "pc59", "val", "semantic"),
    DatasetSplit("context_459_test_sem_seg", "pc459", "val", "semantic"),
)

PART_DATASET_NAMES: tuple[str, ...] = tuple(s.name for s in PART_SPLITS)
TOY_DATASET_NAMES: tuple[str, ...] = tuple(s.name for s in TOY_SPLITS)
SEMANTIC_DATASET_NAMES: tuple[str, ...] = tuple(s.name for s in SEMANTIC_SPLITS)
_SPLITS: dict[str, DatasetSplit] = {s.name: s for s in PART_SPLITS + TOY_SPLITS + SEMANTIC_SPLITS}

VocabularySource = Union[Vocabulary, Callable[[], Vocabulary]]
_REGISTERED: dict[str, VocabularySource] = {}
_PROVIDERS: list[Callable[[str], Optional[Vocabulary]]] = []


def dataset_split(name: str) -> DatasetSplit:
    """The built-in split ``name`` (``KeyError`` listing the known names otherwise)."""
    try:
        return _SPLITS[name]
    except KeyError:
        raise KeyError(f"'{name}' is not a built-in dataset; known: {', '.join(sorted(_SPLITS))}") from None


def dataset_vocabulary_key(name: str) -> str:
    """Vocabulary key of a built-in dataset name, e.g. ``"pascal_part_116"``."""
    return dataset_split(name).key


def _builtin_vocabulary(split: DatasetSplit) -> Vocabulary:
    if split.kind == "semantic":
        key = split.query_key or split.key
        return Vocabulary(get_semantic_classes(key), name=key, parts=False)
    ds = get_part_dataset(split.key)
    if split.kind == "base":
        return Vocabulary(ds.base_class_names, ds.obj_base_classes, name=split.key, parts=True)
    return Vocabulary(ds.class_names, ds.obj_classes, name=split.key, parts=True)


def dataset_ignore_label(name: str, default: int) -> int:
    """The ignore id of a built-in part dataset's label maps (255 or 65535), else ``default``."""
    split = _SPLITS.get(name)
    if split is not None and split.kind != "semantic":
        return get_part_dataset(split.key).ignore_label
    return int(default)


def register_dataset_vocabulary(name: str, vocabulary: VocabularySource) -> None:
    """Give your own dataset ``name`` a vocabulary (or a zero-argument function returning one)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"Dataset name must be a non-empty string, got {name!r}")
    if name in _SPLITS:
        raise ValueError(f"'{name}' is a built-in dataset; its vocabulary is fixed")
    if not isinstance(vocabulary, Vocabulary) and not callable(vocabulary):
        raise TypeError(f"register_dataset_vocabulary('{name}', ...): expected a Vocabulary or a function")
    _REGISTERED[name] = vocabulary


def register_vocabulary_provider(provider: Callable[[str], Optional[Vocabulary]]) -> None:
    """Consult ``provider(name)`` for names that are neither built in nor registered (idempotent)."""
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)


def dataset_vocabulary(name: str) -> Vocabulary:
    """The vocabulary a model uses for dataset ``name``: classes in label-id order and its object list."""
    split = _SPLITS.get(name)
    if split is not None:
        return _builtin_vocabulary(split)
    source = _REGISTERED.get(name)
    if source is not None:
        return source if isinstance(source, Vocabulary) else source()
    for provider in _PROVIDERS:
        vocab = provider(name)
        if vocab is not None:
            return vocab
    raise KeyError(
        f"Dataset '{name}' has no vocabulary: it is not built in ({len(_SPLITS)} names, e.g. "
        f"'voc_obj_part_sem_seg_train') and was not registered. Register its metadata "
        f"(MetadataCatalog.get('{name}').set(stuff_classes=[...], obj_classes=[...])) or call "
        f"partcatseg.vocab.register_dataset_vocabulary('{name}', Vocabulary([...]))"
    )
