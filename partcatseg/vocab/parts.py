"""Object-specific part vocabularies ("cat's head") and the label bookkeeping derived from them.

PartCATSeg never stores separate part / object lists: it derives them from the ``"<object>'s <part>"``
names by string splitting, and Python's case-sensitive ``sorted`` fixes the channel order of the
generalized-part and object text features. Everything here reproduces that derivation exactly
(spec §1.3) so that channel ``i`` means the same thing as in the official code.

Public API:
    PartVocabulary                 the three vocabularies + class->part / class->object indices
    parse_object_parts(text)       "cat: head, ear; dog: tail" -> {"cat": ["head", "ear"], "dog": ["tail"]}
    LabelMaps, label_maps(...)     the official lookup tables (numpy int64)
    oracle_class_mask(names, obj)  the Oracle-Obj substring rule
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import numpy as np

SEP = "'s"


def _split(name: str) -> tuple[str, str]:
    """Split one class name the official way: ``name.split("'s")[0|1].strip()``."""
    pieces = name.split(SEP)
    return pieces[0].strip(), pieces[1].strip()


def _validate_class_names(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"Class name #{i} must be a string, got {type(name).__name__}: {name!r}")
        if not name.strip():
            raise ValueError(f"Class name #{i} is empty")
        if SEP not in name:
            raise ValueError(
                f"Class name #{i} {name!r} has no \"'s\"; expected \"<object>'s <part>\", e.g. \"cat's head\""
            )
        obj, part = _split(name)
        if not obj or not part:
            raise ValueError(
                f"Class name #{i} {name!r} has an empty object or part; expected \"<object>'s <part>\""
            )
        if name in seen:
            raise ValueError(f"Duplicate class name {name!r} (#{i})")
        seen.add(name)


@dataclass(frozen=True, eq=True)
class PartVocabulary:
    """The object-specific classes of one dataset split and the two vocabularies derived from them.

    ``classes`` is kept in the given (dataset) order: it is the label-id order of the part masks and
    of the stage-2 text features. ``part_classes`` / ``object_classes`` are the sorted unique parts
    and objects (stage-1 text features); ``class_to_part[i]`` / ``class_to_object[i]`` index them.
    Attributes cannot be reassigned (treat the lists as read-only).
    """

    classes: list[str]
    part_classes: list[str] = field(init=False)
    object_classes: list[str] = field(init=False)
    class_to_part: list[int] = field(init=False)
    class_to_object: list[int] = field(init=False)

    def __init__(self, classes: Sequence[str]):
        if isinstance(classes, str):
            raise ValueError(f"PartVocabulary expects a list of class names, got the string {classes!r}")
        classes = list(classes)
        if not classes:
            raise ValueError("PartVocabulary needs at least one \"<object>'s <part>\" class name")
        _validate_class_names(classes)
        split = [_split(c) for c in classes]
        parts = sorted({p for _, p in split})
        objects = sorted({o for o, _ in split})
        part_index = {p: i for i, p in enumerate(parts)}
        object_index = {o: i for i, o in enumerate(objects)}
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "part_classes", parts)
        object.__setattr__(self, "object_classes", objects)
        object.__setattr__(self, "class_to_part", [part_index[p] for _, p in split])
        object.__setattr__(self, "class_to_object", [object_index[o] for o, _ in split])

    @classmethod
    def from_objects(cls, object_parts: Mapping[str, Sequence[str]]) -> "PartVocabulary":
        """Build ``"<object>'s <part>"`` classes, objects and parts in the mapping's order."""
        names: list[str] = []
        for obj, parts in object_parts.items():
            if not isinstance(obj, str) or not obj.strip():
                raise ValueError(f"Empty object name in {dict(object_parts)!r}")
            if isinstance(parts, str) or not parts:
                raise ValueError(f"Object {obj!r} needs a non-empty list of part names, got {parts!r}")
            for part in parts:
                if not isinstance(part, str) or not part.strip():
                    raise ValueError(f"Object {obj!r} has an empty part name in {list(parts)!r}")
                names.append(f"{obj.strip()}{SEP} {part.strip()}")
        if not names:
            raise ValueError("PartVocabulary.from_objects needs at least one object with parts")
        return cls(names)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_text_classes_stage1(self) -> int:
        """T1 = generalized parts + objects + background."""
        return len(self.part_classes) + len(self.object_classes) + 1

    @property
    def num_text_classes_stage2(self) -> int:
        """T2 = object-specific classes + background."""
        return len(self.classes) + 1

    def classes_of_object(self, object_name: str) -> list[int]:
        """Indices of the classes whose object is exactly ``object_name`` (no substring matching)."""
        if object_name not in self.object_classes:
            raise KeyError(f"Object {object_name!r} is not in this vocabulary; objects: {list(self.object_classes)}")
        j = self.object_classes.index(object_name)
        return [i for i, o in enumerate(self.class_to_object) if o == j]


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


class LabelMaps(NamedTuple):
    """Official lookup tables (spec §1.3); index with label ids, ``ignore_label`` marks 'no entry'."""

    text_to_part_map: np.ndarray  # (ignore_label+1,) class id -> generalized part index
    obj_to_obj_in_part_map: np.ndarray  # (ignore_label+1,) obj_classes id -> object_classes index
    text_to_obj_in_part_map: np.ndarray  # (len(vocab),) class id -> object_classes index


def label_maps(vocab: PartVocabulary, obj_classes: Sequence[str], ignore_label: int) -> LabelMaps:
    """Build the three maps for a vocabulary and the dataset's full object list.

    ``obj_classes`` is the dataset's object list (including objects without parts, e.g. Pascal's
    boat); objects with no parts in ``vocab`` map to ``ignore_label``. The first two maps have
    ``ignore_label + 1`` entries so that ``map[label_image]`` works on raw label images that
    contain the ignore value (65536 int64 entries = 512 KiB for 16-bit datasets).
    """
    if not isinstance(ignore_label, (int, np.integer)) or ignore_label < 0:
        raise ValueError(f"ignore_label must be a non-negative integer, got {ignore_label!r}")
    ignore_label = int(ignore_label)
    if len(vocab) > ignore_label:
        raise ValueError(
            f"ignore_label={ignore_label} collides with class ids: the vocabulary has {len(vocab)} classes"
        )
    if len(obj_classes) > ignore_label:
        raise ValueError(f"ignore_label={ignore_label} collides with object ids: {len(obj_classes)} objects")
    text_to_part = np.full(ignore_label + 1, ignore_label, dtype=np.int64)
    text_to_part[: len(vocab)] = vocab.class_to_part
    object_index = {o: i for i, o in enumerate(vocab.object_classes)}
    obj_to_obj_in_part = np.full(ignore_label + 1, ignore_label, dtype=np.int64)
    for j, obj in enumerate(obj_classes):
        obj_to_obj_in_part[j] = object_index.get(obj, ignore_label)
    text_to_obj_in_part = np.asarray(vocab.class_to_object, dtype=np.int64)
    return LabelMaps(text_to_part, obj_to_obj_in_part, text_to_obj_in_part)


def oracle_class_mask(class_names: Sequence[str], object_name: str) -> list[bool]:
    """Classes allowed under Oracle-Obj: True where ``object_name`` is a *substring* of the name.

    This is the official rule (spec §1.6, §10.8), not an exact object match: on ADE "door" also
    admits every "<x>'s door" and on PartImageNet-OOD "ox" admits "box turtle's ..." and
    "fox squirrel's ...". Use :meth:`PartVocabulary.classes_of_object` for exact matching.
    """
    if not isinstance(object_name, str) or not object_name:
        raise ValueError(f"object_name must be a non-empty string, got {object_name!r}")
    return [object_name in name for name in class_names]
