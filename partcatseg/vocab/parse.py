"""A user's vocabulary in any of its written forms -> :class:`Vocabulary`.

The command line, the predictors and the web app accept the same forms:

* part models: a dataset key (``pascal_part_116``), a JSON file (a list of ``"<object>'s <part>"`` names
  or an ``{object: [parts]}`` mapping), a list of names, or ``objects="cat: head, ear; dog: tail"``;
* semantic models: a dataset key (``ade150``), a JSON list file, a list of names, or
  ``classes="cat, dog|puppy, grass"`` (``|`` joins synonyms).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from .datasets import (
    PART_DATASETS,
    SEMANTIC_VOCABULARIES,
    SYNTHETIC_PART_DATASETS,
    get_part_dataset,
    get_semantic_classes,
)
from .vocabulary import Vocabulary

__all__ = ["VocabularyError", "parse_object_parts", "parse_class_list", "resolve_vocabulary", "TASKS"]

TASKS = ("part", "semantic")


class VocabularyError(ValueError):
    """A vocabulary specification that cannot be used (the message says what was expected)."""


def parse_object_parts(text: str) -> dict[str, list[str]]:
    """Parse ``"cat: head, ear, eye; dog: head, tail"`` into an ordered ``{object: [parts]}`` dict.

    Objects are separated by ``;``, the object name from its parts by the first ``:``, parts by ``,``.
    Whitespace around names is ignored; empty names, objects without parts and repeats are errors.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("Empty object/part specification; expected e.g. \"cat: head, ear; dog: tail\"")
    chunks = text.split(";")
    if len(chunks) > 1 and not chunks[-1].strip():
        chunks.pop()  # tolerate one trailing ';'
    result: dict[str, list[str]] = {}
    for k, chunk in enumerate(chunks):
        if not chunk.strip():
            raise ValueError(f"Empty entry #{k} between ';' in {text!r}")
        if ":" not in chunk:
            raise ValueError(f"Entry {chunk.strip()!r} has no ':'; expected \"<object>: <part>, <part>\"")
        obj, parts_text = chunk.split(":", 1)
        obj = obj.strip()
        if not obj:
            raise ValueError(f"Entry {chunk.strip()!r} has an empty object name")
        if obj in result:
            raise ValueError(f"Object {obj!r} is listed twice in {text!r}")
        parts = [p.strip() for p in parts_text.split(",")]
        if all(not p for p in parts):
            raise ValueError(f"Object {obj!r} has no parts; expected \"{obj}: <part>, <part>\"")
        if any(not p for p in parts):
            raise ValueError(f"Object {obj!r} has an empty part name in {parts_text.strip()!r}")
        duplicates = sorted({p for p in parts if parts.count(p) > 1})
        if duplicates:
            raise ValueError(f"Object {obj!r} lists part(s) {duplicates} more than once")
        result[obj] = parts
    return result


def parse_class_list(text: str, what: str = "classes") -> list[str]:
    """``"cat, dog|puppy, grass"`` -> ``["cat", "dog, puppy", "grass"]`` (``|`` joins synonyms).

    CAT-Seg treats a comma inside one class name as a synonym separator, so synonyms given with
    ``|`` become exactly that. Empty or repeated names are errors.
    """
    if not isinstance(text, str) or not text.strip():
        raise VocabularyError(f"Empty {what}; expected comma-separated names, e.g. \"cat, dog|puppy, grass\"")
    names = []
    for k, item in enumerate(text.split(",")):
        synonyms = [s.strip() for s in item.split("|")]
        if not any(synonyms):
            raise VocabularyError(f"Empty name at position {k + 1} of {what} {text!r}")
        if not all(synonyms):
            raise VocabularyError(f"Empty synonym in {item.strip()!r} of {what} {text!r}")
        names.append(", ".join(synonyms))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VocabularyError(f"{what} lists {duplicates} more than once")
    return names


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise VocabularyError(f"Vocabulary file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise VocabularyError(f"{path}: not valid JSON ({err})") from err


def _from_names(names: Any, where: str, parts: bool, name: str) -> Vocabulary:
    """A list of names (or, for parts, an ``{object: [parts]}`` mapping) -> Vocabulary."""
    try:
        if parts and isinstance(names, Mapping):
            return Vocabulary.from_objects({str(k): list(v) for k, v in names.items()}, name=name)
        if not isinstance(names, (list, tuple)):
            expected = ("a list of \"<object>'s <part>\" names or an {object: [parts]} mapping"
                        if parts else "a list of class names")
            raise VocabularyError(f"{where}: expected {expected}, got {type(names).__name__}")
        return Vocabulary(list(names), name=name, parts=parts)
    except VocabularyError:
        raise
    except (ValueError, TypeError) as err:
        raise VocabularyError(f"{where}: {err}") from err


def resolve_vocabulary(
    vocabulary: Any = None,
    *,
    objects: Any = None,
    classes: Any = None,
    task: str = "part",
    default: Optional[Vocabulary] = None,
) -> Vocabulary:
    """Turn any accepted form (see the module docstring) into a :class:`Vocabulary` for ``task``.

    ``vocabulary`` may also be a :class:`Vocabulary`; with nothing given, ``default`` is returned.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {list(TASKS)}")
    part = task == "part"
    given = [k for k, v in (("vocabulary", vocabulary), ("objects", objects), ("classes", classes)) if v is not None]
    if len(given) > 1:
        raise VocabularyError(f"Give one of vocabulary, objects or classes, not {' and '.join(given)}")
    if objects is not None:
        if not part:
            raise VocabularyError("objects (\"cat: head, ear\") are for part models; semantic models take classes")
        mapping = objects
        if isinstance(objects, str):
            try:
                mapping = parse_object_parts(objects)
            except ValueError as err:
                raise VocabularyError(f"objects: {err}") from err
        return _from_names(dict(mapping) if isinstance(mapping, Mapping) else mapping, "objects", True, "custom")
    if classes is not None:
        if part:
            raise VocabularyError("classes (\"cat, dog|puppy\") are for semantic models; part models take objects")
        names = parse_class_list(classes) if isinstance(classes, str) else classes
        return _from_names(names, "classes", False, "custom")
    if vocabulary is None:
        if default is None:
            raise VocabularyError("No vocabulary given and the model has none configured")
        return default
    if isinstance(vocabulary, Vocabulary):
        if part and not vocabulary.has_parts:
            raise VocabularyError(
                f"A part model needs a part vocabulary (\"<object>'s <part>\" names); {vocabulary.name!r} has "
                f"plain class names such as {vocabulary.classes[:3]}"
            )
        return vocabulary
    if isinstance(vocabulary, (list, tuple)):
        return _from_names(list(vocabulary), "vocabulary", part, "custom")
    if isinstance(vocabulary, (str, os.PathLike)):
        key = str(vocabulary)
        part_keys = list(PART_DATASETS) + list(SYNTHETIC_PART_DATASETS)
        if part and key in part_keys:
            ds = get_part_dataset(key)
            return Vocabulary(ds.class_names, ds.obj_classes, name=key, parts=True)
        if not part and key in SEMANTIC_VOCABULARIES:
            return Vocabulary(get_semantic_classes(key), name=key, parts=False)
        if key.endswith(".json") or os.path.isfile(key):
            return _from_names(_read_json(key), key, part, os.path.basename(key))
        hint = ""
        if part and ":" in key:
            hint = " (an \"object: part, part\" list goes to objects= / --objects)"
        elif part and key in SEMANTIC_VOCABULARIES:
            hint = " (that is a semantic vocabulary: use a CAT-Seg config for it)"
        elif not part and key in part_keys:
            hint = " (that is a part vocabulary: use a part model's config for it)"
        expected = (f"{part_keys}, a JSON file, or a list of \"<object>'s <part>\" names" if part else
                    f"{list(SEMANTIC_VOCABULARIES)}, a JSON list file, or classes=\"cat, dog|puppy, grass\"")
        raise VocabularyError(f"Unknown {task} vocabulary {key!r}{hint}; expected one of {expected}")
    raise VocabularyError(f"Unsupported vocabulary type {type(vocabulary).__name__}")
