"""The one vocabulary type: class names, optionally with an object -> part structure.

A part vocabulary is a list of ``"<object>'s <part>"`` names. PartCATSeg and PartCLIPSeg never store
separate part / object lists: they derive them by splitting each name at ``"'s"``, and Python's
case-sensitive ``sorted`` fixes the channel order of the generalized-part and object text features.
:class:`Vocabulary` reproduces that derivation exactly, so channel ``i`` means what it means in the
official code. A semantic vocabulary (CAT-Seg) is just the names.

Besides the classes, a vocabulary carries ``objects``: the object list that a record's
``object_class`` indexes (Oracle-Obj). For a dataset this is the dataset's full object list, which
may include objects without parts (Pascal's boat); for a user's own words it is the derived objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["SEP", "Vocabulary", "split_part_name", "LabelMaps", "label_maps", "oracle_class_mask"]

SEP = "'s"


def split_part_name(name: str) -> tuple[str, str]:
    """``"cat's head"`` -> ``("cat", "head")``, the official ``name.split("'s")[0|1].strip()``."""
    pieces = name.split(SEP)
    if len(pieces) < 2:
        raise ValueError(f"{name!r} has no \"'s\"; expected \"<object>'s <part>\", e.g. \"cat's head\"")
    return pieces[0].strip(), pieces[1].strip()


def _is_part_name(name: str) -> bool:
    if SEP not in name:
        return False
    obj, part = split_part_name(name)
    return bool(obj and part)


def _validate_names(names: Sequence[str], parts: bool) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"Class name #{i} must be a string, got {type(name).__name__}: {name!r}")
        if not name.strip():
            raise ValueError(f"Class name #{i} is empty")
        if parts:
            if SEP not in name:
                raise ValueError(
                    f"Class name #{i} {name!r} has no \"'s\"; expected \"<object>'s <part>\", e.g. \"cat's head\""
                )
            if not _is_part_name(name):
                raise ValueError(
                    f"Class name #{i} {name!r} has an empty object or part; expected \"<object>'s <part>\""
                )
        if name in seen:
            raise ValueError(f"Duplicate class name {name!r} (#{i})")
        seen.add(name)


@dataclass(frozen=True, eq=True)
class Vocabulary:
    """Class names, the object list ``object_class`` indexes, and (for parts) the derived lists.

    Args:
        classes: class names in label-id order (the order of the part masks and of the output
            channels). ``"a, b"`` in a semantic name lists synonyms (CAT-Seg's convention).
        objects: the object list that a record's ``object_class`` indexes; default: the derived
            ``object_classes`` of a part vocabulary, ``[]`` for a semantic one.
        name: where the vocabulary came from (a dataset key, a file name, ``"custom"``).
        parts: ``True`` requires ``"<object>'s <part>"`` names, ``False`` treats every name as a plain
            class, ``None`` decides by the names (parts iff every name is ``"<object>'s <part>"``).

    Derived for part vocabularies: ``part_classes`` / ``object_classes`` (sorted unique parts and
    objects: the generalized classes) and ``class_to_part[i]`` / ``class_to_object[i]`` indexing them.
    Attributes cannot be reassigned (treat the lists as read-only).
    """

    classes: list[str]
    objects: list[str] = field(default_factory=list)
    name: str = field(default="custom", compare=False)
    has_parts: bool = False
    part_classes: list[str] = field(init=False, default_factory=list)
    object_classes: list[str] = field(init=False, default_factory=list)
    class_to_part: list[int] = field(init=False, default_factory=list)
    class_to_object: list[int] = field(init=False, default_factory=list)

    def __init__(
        self,
        classes: Sequence[str],
        objects: Optional[Sequence[str]] = None,
        *,
        name: str = "custom",
        parts: Optional[bool] = None,
    ) -> None:
        if isinstance(classes, str):
            raise ValueError(f"A vocabulary needs a list of class names, got the string {classes!r}")
        classes = list(classes)
        if not classes:
            raise ValueError("A vocabulary needs at least one class name")
        if parts is None:
            parts = all(isinstance(c, str) and _is_part_name(c) for c in classes)
        _validate_names(classes, bool(parts))
        setattr_ = object.__setattr__
        setattr_(self, "classes", classes)
        setattr_(self, "name", str(name))
        setattr_(self, "has_parts", bool(parts))
        if parts:
            split = [split_part_name(c) for c in classes]
            part_list = sorted({p for _, p in split})
            object_list = sorted({o for o, _ in split})
            part_index = {p: i for i, p in enumerate(part_list)}
            object_index = {o: i for i, o in enumerate(object_list)}
            setattr_(self, "part_classes", part_list)
            setattr_(self, "object_classes", object_list)
            setattr_(self, "class_to_part", [part_index[p] for _, p in split])
            setattr_(self, "class_to_object", [object_index[o] for o, _ in split])
        else:
            for attr in ("part_classes", "object_classes", "class_to_part", "class_to_object"):
                setattr_(self, attr, [])
        if objects is None:
            objects = list(self.object_classes)
        elif isinstance(objects, str):
            raise ValueError(f"objects must be a list of object names, got the string {objects!r}")
        objects = list(objects)
        if len(set(objects)) != len(objects):
            raise ValueError(f"objects lists names more than once: {sorted({o for o in objects if objects.count(o) > 1})}")
        setattr_(self, "objects", objects)

    @classmethod
    def from_objects(cls, object_parts: Mapping[str, Sequence[str]], *, name: str = "custom") -> "Vocabulary":
        """``{"cat": ["head", "ear"]}`` -> ``"cat's head"``, ``"cat's ear"`` (objects and parts in the mapping's order)."""
        names: list[str] = []
        for obj, part_names in object_parts.items():
            if not isinstance(obj, str) or not obj.strip():
                raise ValueError(f"Empty object name in {dict(object_parts)!r}")
            if isinstance(part_names, str) or not part_names:
                raise ValueError(f"Object {obj!r} needs a non-empty list of part names, got {part_names!r}")
            for part in part_names:
                if not isinstance(part, str) or not part.strip():
                    raise ValueError(f"Object {obj!r} has an empty part name in {list(part_names)!r}")
                names.append(f"{obj.strip()}{SEP} {part.strip()}")
        if not names:
            raise ValueError("Vocabulary.from_objects needs at least one object with parts")
        return cls(names, name=name, parts=True)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_text_classes_stage1(self) -> int:
        """Generalized parts + objects + background (PartCATSeg's stage-1 text channels)."""
        return len(self.part_classes) + len(self.object_classes) + 1

    @property
    def num_text_classes_stage2(self) -> int:
        """Object-specific classes + background."""
        return len(self.classes) + 1

    def object_index(self, object_name: str) -> int:
        """Index of ``object_name`` in :attr:`objects` (the ``object_class`` of a record)."""
        if object_name not in self.objects:
            raise KeyError(f"Object {object_name!r} is not in this vocabulary; objects: {self.objects}")
        return self.objects.index(object_name)

    def classes_of_object(self, object_name: str) -> list[int]:
        """Indices of the classes whose object is exactly ``object_name`` (no substring matching)."""
        if object_name not in self.object_classes:
            raise KeyError(f"Object {object_name!r} is not in this vocabulary; objects: {list(self.object_classes)}")
        j = self.object_classes.index(object_name)
        return [i for i, o in enumerate(self.class_to_object) if o == j]

    def require_parts(self, who: str) -> "Vocabulary":
        """Return self, or raise naming ``who`` if this is not a part vocabulary."""
        if not self.has_parts:
            raise ValueError(
                f"{who} needs a part vocabulary (\"<object>'s <part>\" names); {self.name!r} has "
                f"plain class names such as {self.classes[:3]}"
            )
        return self


class LabelMaps(NamedTuple):
    """The official label lookup tables; index with label ids, ``ignore_label`` marks 'no entry'."""

    text_to_part_map: np.ndarray  # (ignore_label+1,) class id -> generalized part index
    obj_to_obj_in_part_map: np.ndarray  # (ignore_label+1,) object id -> object_classes index
    text_to_obj_in_part_map: np.ndarray  # (len(vocab),) class id -> object_classes index


def label_maps(vocab: Vocabulary, ignore_label: int) -> LabelMaps:
    """The three maps of a part vocabulary; object ids index ``vocab.objects``.

    Objects without parts (e.g. Pascal's boat) map to ``ignore_label``. The first two maps have
    ``ignore_label + 1`` entries so that ``map[label_image]`` works on raw label images that
    contain the ignore value (65536 int64 entries = 512 KiB for 16-bit datasets).
    """
    vocab.require_parts("label_maps")
    if not isinstance(ignore_label, (int, np.integer)) or ignore_label < 0:
        raise ValueError(f"ignore_label must be a non-negative integer, got {ignore_label!r}")
    ignore_label = int(ignore_label)
    if len(vocab) > ignore_label:
        raise ValueError(
            f"ignore_label={ignore_label} collides with class ids: the vocabulary has {len(vocab)} classes"
        )
    if len(vocab.objects) > ignore_label:
        raise ValueError(f"ignore_label={ignore_label} collides with object ids: {len(vocab.objects)} objects")
    text_to_part = np.full(ignore_label + 1, ignore_label, dtype=np.int64)
    text_to_part[: len(vocab)] = vocab.class_to_part
    object_index = {o: i for i, o in enumerate(vocab.object_classes)}
    obj_to_obj_in_part = np.full(ignore_label + 1, ignore_label, dtype=np.int64)
    for j, obj in enumerate(vocab.objects):
        obj_to_obj_in_part[j] = object_index.get(obj, ignore_label)
    text_to_obj_in_part = np.asarray(vocab.class_to_object, dtype=np.int64)
    return LabelMaps(text_to_part, obj_to_obj_in_part, text_to_obj_in_part)


def oracle_class_mask(class_names: Sequence[str], object_name: str) -> list[bool]:
    """Classes allowed under Oracle-Obj: True where ``object_name`` is a *substring* of the name.

    This is the official rule, not an exact object match: on ADE "door" also admits every
    "<x>'s door", and on PartImageNet-OOD "ox" admits "box turtle's ..." and "fox squirrel's ...".
    Use :meth:`Vocabulary.classes_of_object` for exact matching.
    """
    if not isinstance(object_name, str) or not object_name:
        raise ValueError(f"object_name must be a non-empty string, got {object_name!r}")
    return [object_name in name for name in class_names]
