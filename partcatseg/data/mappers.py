"""Dataset mappers: one detectron2-style record -> the tensors the models consume.

* ``ObjPartSemanticMapper`` — official ``SemanticObjPartDatasetMapper`` (Pascal-Part-116, ADE20K-Part-234),
  ``INPUT.DATASET_MAPPER_NAME = "obj_part_semantic"``.
* ``PartImageNetMapper`` / ``PartImageNetOODMapper`` — official ``PartImagenet(OOD)DatasetMapper``
  (``"partimagenet"`` / ``"partimagenet_ood"``), including their quirks .
* ``SemanticMapper`` — CAT-Seg ``MaskFormerSemanticDatasetMapper`` for training
  (``"mask_former_semantic"``) and detectron2's default ``DatasetMapper`` for testing (image only).

Every mapper is a callable ``mapper(record, rng=None) -> dict | None``. ``rng`` (an ``AugRandom``)
supplies all augmentation randomness; the loaders pass one derived from (seed, sample index) so a
sample is the same whatever worker maps it. Without ``rng`` the mapper uses its own stream.

Part-mapper output (the record's own fields are kept):

* ``image``: uint8 tensor (3, H, W), RGB (``INPUT.FORMAT``);
* ``sem_seg``: int64 (H, W) object ids (ignore = the dataset's ``ignore_label``);
* ``obj_part_sem_seg``: int64 (H, W) object-specific part ids;
* ``object_class``: int, the first (smallest) object id present in ``sem_seg`` — what the official model
  reads as ``instances.gt_classes[0]`` for Oracle-Obj; the conditioned object on ``*_obj_condition``
  records; -1 if no object pixel is left (the official ``gt_classes=[-1]``);
* ``height`` / ``width``: the decoded image's size (after EXIF rotation);
* ``ori_size``: (H, W) before the training padding (only when padding is on).

At test time labels stay at the mapper's resized resolution (the evaluator resizes them to the
prediction size: the official two-step GT resize).

Differences from the official mappers (no effect on what the model or the evaluator see): the
``instances`` / ``obj_part_instances`` structures and the ``ori_*`` arrays are not produced (the model
reads ``object_class``, the evaluator ``obj_part_sem_seg``); bad files raise ``BadRecordError`` naming
the file; label ids outside the class list (other than ignore) are an error instead of silently
becoming garbage classes; the PartImageNet mappers do not run the augmentations whose results the
official code discards.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fvcore.common.registry import Registry
from PIL import Image, ImageOps

from .catalog import MetadataCatalog
from .transforms import (
    AugInput,
    AugRandom,
    Augmentation,
    ColorAugSSD,
    RandomCrop_CategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    Transform,
    apply_augmentations,
)

__all__ = [
    "BadRecordError",
    "read_image",
    "read_label_map",
    "check_image_size",
    "annotation_to_mask",
    "ObjPartSemanticMapper",
    "PartImageNetMapper",
    "PartImageNetOODMapper",
    "SemanticMapper",
    "MAPPER_REGISTRY",
    "mapper_class",
    "build_mapper",
    "build_augmentations",
]

logger = logging.getLogger(__name__)

MAPPER_REGISTRY = Registry("DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers by class name; each has a config_name (INPUT.DATASET_MAPPER_NAME)."


class BadRecordError(ValueError):
    """A record whose files cannot be used (unreadable, truncated, wrong size, bad label ids)."""

    def __init__(self, file_name: str, message: Optional[str] = None) -> None:
        # One-argument form = an already formatted message (how torch re-raises worker errors).
        super().__init__(file_name if message is None else f"{file_name}: {message}")
        self.file_name = file_name if message is not None else None
        self.reason = message if message is not None else file_name


# ----------------------------------------------------------------------------------------------
# file reading (detectron2 ``detection_utils.read_image`` semantics)
# ----------------------------------------------------------------------------------------------
def _exif_rotate(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, as detectron2 does (camera JPEGs are often stored rotated)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: keep the pixels as stored (detectron2 does the same)
        return image


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Decode an image file to a numpy array (HxWx3 uint8 for "RGB"/"BGR", raw values for ``None``).

    Raises ``BadRecordError`` naming the file if it is missing, unreadable or truncated.
    """
    if format not in (None, "RGB", "BGR", "L"):
        raise ValueError(f"read_image: unsupported format {format!r} (expected None, 'RGB', 'BGR' or 'L')")
    try:
        with open(file_name, "rb") as f:
            image = Image.open(f)
            image = _exif_rotate(image)
            if format is not None:
                image = image.convert("RGB" if format == "BGR" else format)
            arr = np.asarray(image)
    except FileNotFoundError:
        raise BadRecordError(str(file_name), "file not found") from None
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError... on broken files
        raise BadRecordError(str(file_name), f"cannot decode image ({type(e).__name__}: {e})") from e
    if format == "BGR":
        arr = arr[:, :, ::-1]
    elif format == "L":
        arr = arr[:, :, None]
    return arr


def read_label_map(file_name: str) -> np.ndarray:
    """A single-channel label PNG/TIFF (8- or 16-bit) as float64 (H, W) — the official map dtype."""
    arr = read_image(file_name)
    if arr.ndim != 2:
        raise BadRecordError(str(file_name), f"label map must be single-channel, got array of shape {arr.shape}")
    return arr.astype(np.float64)


def check_image_size(record: dict, image: np.ndarray) -> None:
    """Check ``width``/``height`` against the decoded image, filling them in when absent."""
    h, w = image.shape[:2]
    if "width" in record or "height" in record:
        expected = (record.get("width"), record.get("height"))
        if expected != (w, h):
            raise BadRecordError(
                str(record.get("file_name", "<record>")),
                f"image is {w}x{h} (WxH) but the record says {expected[0]}x{expected[1]}",
            )
    record.setdefault("width", w)
    record.setdefault("height", h)


def annotation_to_mask(ann: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> uint8 (H, W) mask."""
    import pycocotools.mask as mask_utils

    segm = ann["segmentation"]
    if isinstance(segm, list):  # polygons of one object: merge into one RLE
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise TypeError(f"unsupported segmentation type {type(segm).__name__}")
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation decodes to {mask.shape}, expected {(height, width)}")
    return mask


# ----------------------------------------------------------------------------------------------
# label helpers
# ----------------------------------------------------------------------------------------------
def _validate_ids(labels: np.ndarray, num: Optional[int], ignore: int, what: str, file_name: str) -> None:
    """Every value must be an integer in [0, num) or the ignore label."""
    values = np.unique(labels)
    bad = values[(values != np.round(values)) | (values < 0)]
    if num is not None:
        bad = np.union1d(bad, values[(values >= num) & (values != ignore)])
    if bad.size:
        shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in bad[:10])
        limit = f"[0, {num})" if num is not None else "non-negative integers"
        raise BadRecordError(
            file_name, f"{what} contains ids outside {limit} other than ignore={ignore}: {shown}"
        )


def _lookup_table(mapping: Mapping[Any, Any], ignore: int) -> np.ndarray:
    """Dense old-id -> new-id table; ids absent from ``mapping`` (and ignore) go to ignore."""
    keys = [int(k) for k in mapping]
    size = max([ignore] + keys) + 1
    lut = np.full(size, ignore, dtype=np.int64)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
    return lut


def _remap(labels: np.ndarray, lut: Optional[np.ndarray], ignore: int) -> np.ndarray:
    if lut is None:
        return labels
    idx = labels.astype(np.int64)
    out = np.full(labels.shape, ignore, dtype=np.float64)
    inside = idx < len(lut)
    out[inside] = lut[idx[inside]]
    return out


def _first_object(obj: np.ndarray, ignore: int) -> int:
    present = np.unique(obj)
    present = present[present != ignore]
    return int(present[0]) if present.size else -1


def _pad_exact(t: torch.Tensor, size: int, value: int) -> torch.Tensor:
    """Pad bottom/right to ``size x size`` (negative amounts crop: the official ``F.pad`` behaviour)."""
    h, w = t.shape[-2:]
    return F.pad(t, [0, size - w, 0, size - h], value=value).contiguous()


def _to_outputs(
    record: dict,
    image: np.ndarray,
    labels: dict[str, np.ndarray],
    size_divisibility: int,
    ignore: int,
) -> dict:
    """Tensors + training padding (image 128, labels ignore), written into ``record``."""
    img = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    tensors = {k: torch.as_tensor(np.ascontiguousarray(v).astype(np.int64)) for k, v in labels.items()}
    if size_divisibility > 0:
        record["ori_size"] = (int(img.shape[-2]), int(img.shape[-1]))
        img = _pad_exact(img, size_divisibility, 128)
        tensors = {k: _pad_exact(v, size_divisibility, ignore) for k, v in tensors.items()}
    record["image"] = img
    record.update(tensors)
    return record


# ----------------------------------------------------------------------------------------------
# config -> augmentations
# ----------------------------------------------------------------------------------------------
def build_augmentations(cfg: Any, is_train: bool, crop_ignore: int) -> list[Augmentation]:
    """The official augmentation lists (train: resize, crop, SSD colour, flip; test: resize)."""
    inp = cfg.INPUT
    if not is_train:
        return [ResizeShortestEdge(inp.MIN_SIZE_TEST, inp.MAX_SIZE_TEST, "choice")]
    augs: list[Augmentation] = [
        ResizeShortestEdge(inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if inp.CROP.ENABLED:
        augs.append(
            RandomCrop_CategoryAreaConstraint(
                inp.CROP.TYPE, tuple(inp.CROP.SIZE), inp.CROP.SINGLE_CATEGORY_MAX_AREA, crop_ignore
            )
        )
    if inp.COLOR_AUG_SSD:
        augs.append(ColorAugSSD(img_format=inp.FORMAT))
    augs.append(RandomFlip())  # the official mappers ignore INPUT.RANDOM_FLIP
    return augs


def _dataset_name(cfg: Any, is_train: bool, dataset_name: Optional[str]) -> str:
    if dataset_name:
        return dataset_name
    names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
    key = "DATASETS.TRAIN" if is_train else "DATASETS.TEST"
    if not names:
        raise ValueError(f"{key} is empty: cannot pick the dataset whose metadata configures the mapper")
    return names[0]


def _full_part_lists(meta: Any) -> Optional[tuple[list[str], list[str]]]:
    """The full (class, object) lists the label files index, for a part dataset's metadata.

    Training splits carry base lists plus ``obj_map``/``obj_part_map``; their label files still use
    full ids, so the full lists are recovered from the vocabulary whose base lists match.
    """
    from partcatseg.vocab import datasets as vocab

    stuff = list(meta.get("stuff_classes") or [])
    objs = list(meta.get("obj_classes") or [])
    if meta.get("obj_part_map") is None:
        return (stuff, objs) if stuff else None
    keys = tuple(vocab.PART_DATASETS) + tuple(getattr(vocab, "SYNTHETIC_PART_DATASETS", ()))
    for key in keys:
        ds = vocab.get_part_dataset(key)
        if ds.base_class_names == stuff and (not objs or ds.obj_base_classes == objs):
            return list(ds.class_names), list(ds.obj_classes)
    logger.warning("No known vocabulary has the base lists of dataset %r: raw label ids are not range-checked",
                   meta.get("name"))
    return None


# ----------------------------------------------------------------------------------------------
# mappers
# ----------------------------------------------------------------------------------------------
class _MapperBase:
    """Shared plumbing: augmentation list, default RNG, image reading.

    A mapper class is registered in :data:`MAPPER_REGISTRY`, names its ``INPUT.DATASET_MAPPER_NAME``
    in ``config_name`` and maps config keys to its constructor in ``from_config(cfg, is_train, dataset_name)``.
    """

    config_name: str = ""

    def __init__(
        self,
        is_train: bool,
        augmentations: Sequence[Augmentation | Transform],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        seed: Optional[int],
    ) -> None:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"{type(self).__name__}: image_format must be 'RGB' or 'BGR', got {image_format!r}")
        self.is_train = bool(is_train)
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.ignore_label = int(ignore_label)
        self.size_divisibility = int(size_divisibility)
        self._rng = AugRandom.from_seed(seed) if seed is not None else AugRandom.fresh()
        mode = "training" if is_train else "inference"
        logger.info("[%s] augmentations used in %s: %s", type(self).__name__, mode, self.augmentations)

    def _read(self, record: dict) -> np.ndarray:
        if "file_name" not in record:
            raise KeyError(f"{type(self).__name__}: record has no 'file_name' (keys: {sorted(record)})")
        image = read_image(record["file_name"], format=self.image_format)
        check_image_size(record, image)
        return image

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(is_train={self.is_train}, augmentations={self.augmentations}, "
            f"ignore_label={self.ignore_label}, size_divisibility={self.size_divisibility})"
        )


@MAPPER_REGISTRY.register()
class ObjPartSemanticMapper(_MapperBase):
    """Object + part semantic maps for Pascal-Part-116 / ADE20K-Part-234.

    Args:
        is_train: selects nothing by itself (the augmentation list and ``size_divisibility`` do); kept
            for the official interface and logging.
        augmentations: policies/transforms applied jointly to image, object map and part map.
        image_format: "RGB" (the official configs) or "BGR".
        ignore_label: 255 (Pascal) / 65535 (ADE); also the object-map background.
        size_divisibility: > 0 pads (or crops) image/labels to exactly this square size (training: 384).
        obj_map / obj_part_map: full id -> base id (training splits); other ids become ignore.
        num_classes / num_obj_classes: sizes of the *full* lists the label files index (validation of
            raw ids; ``None`` skips the upper-bound check).
        seed: seed of the mapper's own RNG, used only when ``__call__`` gets no ``rng``.
    """

    config_name = "obj_part_semantic"  # INPUT.DATASET_MAPPER_NAME

    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[Augmentation | Transform],
        image_format: str = "RGB",
        ignore_label: int,
        size_divisibility: int = -1,
        obj_map: Optional[Mapping[int, int]] = None,
        obj_part_map: Optional[Mapping[int, int]] = None,
        num_classes: Optional[int] = None,
        num_obj_classes: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(is_train, augmentations, image_format, ignore_label, size_divisibility, seed)
        self.obj_map = dict(obj_map) if obj_map is not None else None
        self.obj_part_map = dict(obj_part_map) if obj_part_map is not None else None
        self._obj_lut = _lookup_table(self.obj_map, self.ignore_label) if self.obj_map is not None else None
        self._part_lut = (
            _lookup_table(self.obj_part_map, self.ignore_label) if self.obj_part_map is not None else None
        )
        self.num_classes = num_classes
        self.num_obj_classes = num_obj_classes

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True, dataset_name: Optional[str] = None) -> dict:
        """Constructor kwargs from a config (detectron2 ``@configurable`` convention)."""
        name = _dataset_name(cfg, is_train, dataset_name)
        meta = MetadataCatalog.get(name)
        ignore = int(meta.get("ignore_label", 255))
        full = _full_part_lists(meta)
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train, ignore),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY if is_train else -1,
            "obj_map": meta.get("obj_map"),
            "obj_part_map": meta.get("obj_part_map"),
            "num_classes": len(full[0]) if full else None,
            "num_obj_classes": len(full[1]) if full and full[1] else None,
        }

    # -- ground truth ------------------------------------------------------------------------
    def _rasterize(self, anns: Sequence[Mapping], h: int, w: int, file_name: str) -> np.ndarray:
        out = np.full((h, w), float(self.ignore_label), dtype=np.float64)
        for i, ann in enumerate(anns):  # later annotations overwrite earlier ones (official order)
            try:
                mask = annotation_to_mask(ann, h, w)
                value = float(ann["category_id"])
            except Exception as e:
                raise BadRecordError(file_name, f"annotation #{i} cannot be rasterised ({type(e).__name__}: {e})") from e
            out[mask == 1] = value
        return out

    def _label(self, record: dict, file_key: str, anns_key: str, h: int, w: int) -> np.ndarray:
        path = record.get(file_key)
        if path is not None and path != "NA":
            gt = read_label_map(path)
            if gt.shape != (h, w):
                raise BadRecordError(path, f"label map is {gt.shape[1]}x{gt.shape[0]} (WxH), image is {w}x{h}")
            return gt
        if anns_key in record:
            return self._rasterize(record[anns_key], h, w, str(record["file_name"]))
        raise BadRecordError(
            str(record.get("file_name", "<record>")),
            f"record has neither '{file_key}' nor '{anns_key}' (keys: {sorted(record)})",
        )

    def __call__(self, dataset_dict: dict, rng: Optional[AugRandom] = None) -> Optional[dict]:
        record = copy.deepcopy(dataset_dict)
        if "annotations" in record:
            raise ValueError(f"{record.get('file_name')}: semantic segmentation records must not have 'annotations'")
        image = self._read(record)
        h, w = image.shape[:2]
        part = self._label(record, "sem_seg_file_name", "obj_part_annotations", h, w)
        obj = self._label(record, "obj_sem_seg_file_name", "obj_annotations", h, w)
        _validate_ids(part, self.num_classes, self.ignore_label, "part label map",
                      str(record.get("sem_seg_file_name") or record["file_name"]))
        _validate_ids(obj, self.num_obj_classes, self.ignore_label, "object label map",
                      str(record.get("obj_sem_seg_file_name") or record["file_name"]))

        aug = AugInput(image, sem_seg=obj, part_sem_seg=part)
        apply_augmentations(self.augmentations, aug, rng if rng is not None else self._rng)
        image, obj, part = aug.image, np.array(aug.sem_seg), np.array(aug.part_sem_seg)

        if "category_id" in record:  # object-conditioned record: keep only that object's pixels
            outside = obj != record["category_id"]
            obj[outside] = self.ignore_label
            part[outside] = self.ignore_label
        obj = _remap(obj, self._obj_lut, self.ignore_label)
        part = _remap(part, self._part_lut, self.ignore_label)
        if np.all(part == self.ignore_label):
            return None
        record["object_class"] = _first_object(obj, self.ignore_label)
        return _to_outputs(
            record, image, {"sem_seg": obj, "obj_part_sem_seg": part}, self.size_divisibility, self.ignore_label
        )


@MAPPER_REGISTRY.register()
class PartImageNetMapper(ObjPartSemanticMapper):
    """PartImageNet: labels built from part polygons; the official quirks kept.

    * Part class of an annotation = ``"<object>'s <part>"`` where ``<part>`` is its part category name
      without the first (super-category) word, lower-cased ("Car Side Mirror" -> "side mirror", "Car
      Tier" -> "tier"); looked up in the full class list (error naming the class if absent). Object and
      part masks are painted per annotation, later ones overwriting earlier ones.
    * The image's object comes from ``obj_class_name`` or ``obj_class_id`` (an index into the *full*
      object list, i.e. the dataset's ``OBJ_CLASS_NAMES``).
    * No augmentation reaches the output (the official assignments are commented out) and no
      object-conditioned masking is applied; with ``size_divisibility > 0`` (training) the
      original-resolution image is cut to its top-left ``size x size`` corner or padded with 128;
      at test time everything stays at the original resolution.
    * ``obj_map`` / ``obj_part_map`` remap full -> base ids (training splits).
    """

    config_name = "partimagenet"  # INPUT.DATASET_MAPPER_NAME

    VOCABULARY = "partimagenet"

    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[Augmentation | Transform] = (),
        image_format: str = "RGB",
        ignore_label: int = 65535,
        size_divisibility: int = -1,
        obj_map: Optional[Mapping[int, int]] = None,
        obj_part_map: Optional[Mapping[int, int]] = None,
        class_names: Sequence[str],
        obj_classes: Sequence[str],
        part_categories: Sequence[Any],
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(
            is_train,
            augmentations=augmentations,
            image_format=image_format,
            ignore_label=ignore_label,
            size_divisibility=size_divisibility,
            obj_map=obj_map,
            obj_part_map=obj_part_map,
            num_classes=len(class_names),
            num_obj_classes=len(obj_classes),
            seed=seed,
        )
        self.class_names = list(class_names)
        self.obj_classes = list(obj_classes)
        names = [c["name"] if isinstance(c, Mapping) else str(c) for c in part_categories]
        self.part_names = [self._part_word(n) for n in names]
        self._class_index = {c: i for i, c in enumerate(self.class_names)}

    @staticmethod
    def _part_word(category: str) -> str:
        pieces = category.split(" ", 1)
        if len(pieces) != 2:
            raise ValueError(f"PartImageNet part category {category!r} is not '<Supercategory> <Part>'")
        return pieces[1].lower()

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True, dataset_name: Optional[str] = None) -> dict:
        from partcatseg.vocab.datasets import get_part_dataset

        name = _dataset_name(cfg, is_train, dataset_name)
        meta = MetadataCatalog.get(name)
        vocab = get_part_dataset(cls.VOCABULARY)
        ignore = int(meta.get("ignore_label", vocab.ignore_label))
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train, ignore),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY if is_train else -1,
            "obj_map": meta.get("obj_map"),
            "obj_part_map": meta.get("obj_part_map"),
            "class_names": list(vocab.class_names),
            "obj_classes": list(vocab.obj_classes),
            "part_categories": list(meta.get("part_categories") or vocab.part_categories),
        }

    def _object_name(self, record: dict) -> str:
        file_name = str(record["file_name"])
        if record.get("obj_class_name") is not None:
            name = str(record["obj_class_name"])
            if name not in self.obj_classes:
                raise BadRecordError(file_name, f"object {name!r} is not in the object list ({len(self.obj_classes)} names)")
            return name
        if record.get("obj_class_id") is not None:
            idx = int(record["obj_class_id"])
            if not 0 <= idx < len(self.obj_classes):
                raise BadRecordError(file_name, f"obj_class_id {idx} outside [0, {len(self.obj_classes)})")
            return self.obj_classes[idx]
        raise BadRecordError(file_name, "PartImageNet record needs 'obj_class_name' or 'obj_class_id'")

    def __call__(self, dataset_dict: dict, rng: Optional[AugRandom] = None) -> Optional[dict]:
        record = copy.deepcopy(dataset_dict)
        image = self._read(record)
        h, w = image.shape[:2]
        file_name = str(record["file_name"])
        obj_name = self._object_name(record)
        obj_id = float(self.obj_classes.index(obj_name))
        anns = record.get("obj_part_annotations", record.get("obj_annotations"))
        if anns is None:
            raise BadRecordError(file_name, "PartImageNet record needs 'obj_part_annotations' (COCO part polygons)")

        part = np.full((h, w), float(self.ignore_label), dtype=np.float64)
        obj = np.full((h, w), float(self.ignore_label), dtype=np.float64)
        for i, ann in enumerate(anns):
            cat = int(ann["category_id"])
            if not 0 <= cat < len(self.part_names):
                raise BadRecordError(file_name, f"annotation #{i}: part category {cat} outside [0, {len(self.part_names)})")
            cls_name = f"{obj_name}'s {self.part_names[cat]}"
            if cls_name not in self._class_index:
                raise BadRecordError(file_name, f"annotation #{i}: class {cls_name!r} is not in the class list")
            try:
                mask = annotation_to_mask(ann, h, w)
            except Exception as e:
                raise BadRecordError(file_name, f"annotation #{i} cannot be rasterised ({type(e).__name__}: {e})") from e
            part[mask == 1] = self._class_index[cls_name]
            obj[mask == 1] = obj_id

        obj = _remap(obj, self._obj_lut, self.ignore_label)
        part = _remap(part, self._part_lut, self.ignore_label)
        if np.all(part == self.ignore_label):
            return None
        record["object_class"] = _first_object(obj, self.ignore_label)
        return _to_outputs(
            record, image, {"sem_seg": obj, "obj_part_sem_seg": part}, self.size_divisibility, self.ignore_label
        )


@MAPPER_REGISTRY.register()
class PartImageNetOODMapper(PartImageNetMapper):
    """PartImageNet-OOD: identical behaviour, the 482-class / 128-object lists."""

    config_name = "partimagenet_ood"  # INPUT.DATASET_MAPPER_NAME

    VOCABULARY = "partimagenet_ood"


@MAPPER_REGISTRY.register()
class SemanticMapper(_MapperBase):
    """CAT-Seg semantic segmentation mapper.

    Training (``MaskFormerSemanticDatasetMapper``): image + ``sem_seg_file_name`` (PNG/TIFF, any bit depth)
    augmented jointly, padded to ``size_divisibility`` (image 128, label ignore); output ``image`` and
    ``sem_seg`` (int64). Testing (detectron2 ``DatasetMapper``): the image only, resized; the record
    keeps ``sem_seg_file_name`` so the evaluator reads the GT at original resolution.
    """

    config_name = "mask_former_semantic"  # INPUT.DATASET_MAPPER_NAME

    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[Augmentation | Transform],
        image_format: str = "RGB",
        ignore_label: int = 255,
        size_divisibility: int = -1,
        num_classes: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(is_train, augmentations, image_format, ignore_label, size_divisibility, seed)
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True, dataset_name: Optional[str] = None) -> dict:
        name = _dataset_name(cfg, is_train, dataset_name)
        meta = MetadataCatalog.get(name)
        classes = meta.get("stuff_classes")
        return {
            "is_train": is_train,
            # CAT-Seg crops with MODEL.SEM_SEG_HEAD.IGNORE_VALUE, pads/validates with the metadata's
            "augmentations": build_augmentations(cfg, is_train, int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": int(meta.get("ignore_label", 255)),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY if is_train else -1,
            "num_classes": len(classes) if classes else None,
        }

    def __call__(self, dataset_dict: dict, rng: Optional[AugRandom] = None) -> Optional[dict]:
        record = copy.deepcopy(dataset_dict)
        if "annotations" in record:
            raise ValueError(f"{record.get('file_name')}: semantic segmentation records must not have 'annotations'")
        image = self._read(record)
        rng = rng if rng is not None else self._rng
        if not self.is_train:
            aug = AugInput(image)
            apply_augmentations(self.augmentations, aug, rng)
            return _to_outputs(record, aug.image, {}, -1, self.ignore_label)
        path = record.get("sem_seg_file_name")
        if path is None:
            raise BadRecordError(str(record["file_name"]), "training record has no 'sem_seg_file_name'")
        gt = read_label_map(path)
        h, w = image.shape[:2]
        if gt.shape != (h, w):
            raise BadRecordError(path, f"label map is {gt.shape[1]}x{gt.shape[0]} (WxH), image is {w}x{h}")
        _validate_ids(gt, self.num_classes, self.ignore_label, "label map", str(path))
        aug = AugInput(image, sem_seg=gt)
        apply_augmentations(self.augmentations, aug, rng)
        return _to_outputs(record, aug.image, {"sem_seg": aug.sem_seg}, self.size_divisibility, self.ignore_label)


def mapper_class(name: str) -> type:
    """The registered mapper whose ``config_name`` (``INPUT.DATASET_MAPPER_NAME``) or class name is ``name``."""
    for cls_name, cls in MAPPER_REGISTRY:
        if name in (cls.config_name, cls_name):
            return cls
    known = sorted(cls.config_name or n for n, cls in MAPPER_REGISTRY)
    raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is unknown; expected one of {known}")


def build_mapper(cfg: Any, is_train: bool, dataset_name: Optional[str] = None, seed: Optional[int] = None):
    """The mapper ``INPUT.DATASET_MAPPER_NAME`` selects, configured for ``dataset_name``.

    ``dataset_name`` defaults to ``DATASETS.TRAIN[0]`` / ``DATASETS.TEST[0]``.
    """
    cls = mapper_class(cfg.INPUT.DATASET_MAPPER_NAME)
    return cls(**cls.from_config(cfg, is_train, dataset_name), seed=seed)
