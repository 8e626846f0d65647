"""Segment your own images with your own vocabulary: no dataset, no ground truth.

The official PartCATSeg inference reads the ground-truth object of every image, even in Pred-All.
Here the vocabulary and (optionally) the object are plain inputs:

    from partcatseg.config import setup_cfg
    from partcatseg.predict import PartPredictor

    cfg = setup_cfg("configs/zero_shot/partcatseg_voc.yaml", ["MODEL.WEIGHTS", "partcatseg_voc"])
    predictor = PartPredictor(cfg, objects="cat: head, ear, eye, torso, leg, tail; dog: head, ear")
    pred = predictor("cat.jpg")                          # Pred-All: every class + background
    pred = predictor("cat.jpg", object="cat")            # Oracle-style: only the cat's classes
    pred = predictor("cat.jpg", object="cat", object_mask=mask)  # ... and only inside the mask
    pred.labels, pred.scores, pred.class_names, pred.label_names_present

:class:`SemanticPredictor` does the same for CAT-Seg semantic segmentation (``"cat, dog|puppy, grass"``).
Text features are computed once per vocabulary and cached on disk by the model
(``MODEL.TEXT_CACHE_DIR``); images are processed in batches of ``batch_size``.
"""
from __future__ import annotations

import abc

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .vocab import (
    PART_DATASETS,
    SEMANTIC_VOCABULARIES,
    SYNTHETIC_PART_DATASETS,
    PartVocabulary,
    get_part_dataset,
    get_semantic_classes,
    oracle_class_mask,
    parse_object_parts,
)

__all__ = [
    "Prediction",
    "PartPredictor",
    "SemanticPredictor",
    "ResolvedPartVocabulary",
    "build_predictor",
    "build_model_with_weights",
    "load_image",
    "load_mask",
    "resolve_part_vocabulary",
    "resolve_semantic_vocabulary",
    "parse_class_list",
    "VocabularyError",
]

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, np.ndarray, Any]  # Any: PIL.Image.Image
MaskInput = Union[str, os.PathLike, np.ndarray, torch.Tensor, Any]


class VocabularyError(ValueError):
    """A vocabulary specification that cannot be used (the message says what was expected)."""


# ------------------------------------------------------------------------------------------ inputs
def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def load_image(image: ImageInput) -> tuple[np.ndarray, Optional[str]]:
    """An (H, W, 3) uint8 RGB array and the source path (if any).

    Paths are read with Pillow and turned upright by their EXIF orientation (what a photo viewer
    shows). PIL images are converted to RGB as given. Arrays must be uint8 (H, W), (H, W, 3) RGB
    or (H, W, 4) RGBA (alpha dropped).
    """
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        path = str(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                array = np.array(im.convert("RGB"))
        except OSError as err:
            raise ValueError(f"Cannot read {path} as an image: {err}") from err
        return np.ascontiguousarray(array), path
    if _is_pil(image):
        return np.array(image.convert("RGB")), getattr(image, "filename", None) or None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"Image arrays must be uint8 RGB (H, W, 3); got dtype {image.dtype} — convert with "
                f"(x * 255).clip(0, 255).astype(np.uint8) if your values are in [0, 1]"
            )
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Image arrays must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey; got {image.shape}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"Empty image of shape {image.shape}")
        return np.ascontiguousarray(image), None
    raise TypeError(
        f"Unsupported image input {type(image).__name__}; expected a file path, a PIL image or a uint8 "
        f"numpy array (H, W, 3) in RGB order"
    )


def load_mask(mask: MaskInput, size: tuple[int, int], what: str = "object_mask") -> np.ndarray:
    """An (H, W) bool mask of ``size`` from a bool/0-1 array, a tensor, a PIL image or a PNG path (non-zero = inside)."""
    from PIL import Image

    source = ""
    if isinstance(mask, (str, os.PathLike)):
        source = f" ({mask})"
        if not os.path.isfile(str(mask)):
            raise FileNotFoundError(f"{what} file not found: {mask}")
        with Image.open(str(mask)) as im:
            array = np.asarray(im.convert("L"))
    elif _is_pil(mask):
        array = np.asarray(mask.convert("L"))
    elif isinstance(mask, torch.Tensor):
        array = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        array = mask
    else:
        raise TypeError(f"Unsupported {what} {type(mask).__name__}; expected an (H, W) bool array, a tensor or a PNG path")
    if array.ndim != 2:
        raise ValueError(f"{what}{source} must be (H, W); got shape {array.shape}")
    if tuple(array.shape) != tuple(size):
        raise ValueError(f"{what}{source} has shape {tuple(array.shape)} but the image is {tuple(size)} (H, W)")
    return array != 0


# ------------------------------------------------------------------------------------------ vocabularies
@dataclass(frozen=True)
class ResolvedPartVocabulary:
    """A part vocabulary and the object list that ``object=`` indexes."""

    vocab: PartVocabulary
    obj_classes: tuple[str, ...]
    name: str  # dataset key, file name or "custom"

    @property
    def classes(self) -> list[str]:
        return list(self.vocab.classes)


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


def _read_json_vocabulary(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise VocabularyError(f"{path}: not valid JSON ({err})") from err


def _part_vocab_from_names(names: Any, where: str) -> PartVocabulary:
    if isinstance(names, Mapping):
        try:
            return PartVocabulary.from_objects({str(k): list(v) for k, v in names.items()})
        except (ValueError, TypeError) as err:
            raise VocabularyError(f"{where}: {err}") from err
    if not isinstance(names, (list, tuple)):
        raise VocabularyError(
            f"{where}: expected a list of \"<object>'s <part>\" names or an {{object: [parts]}} mapping, "
            f"got {type(names).__name__}"
        )
    try:
        return PartVocabulary(list(names))
    except ValueError as err:
        raise VocabularyError(f"{where}: {err}") from err


def resolve_part_vocabulary(
    vocabulary: Any = None,
    objects: Any = None,
    default: Optional[ResolvedPartVocabulary] = None,
) -> ResolvedPartVocabulary:
    """Turn the user's vocabulary forms into a :class:`ResolvedPartVocabulary`.

    ``vocabulary``: a part dataset key (``pascal_part_116``, ``ade_part_234``, ``partimagenet``,
    ``partimagenet_ood``, ``toy_part``), a JSON file (a list of "obj's part" names or an
    ``{object: [parts]}`` mapping), a list of "obj's part" names, or a :class:`PartVocabulary`.
    ``objects``: ``"cat: head, ear; dog: tail"`` or ``{"cat": ["head", "ear"]}`` ("cat's head" classes).
    Neither: ``default`` (the model's configured test vocabulary).
    """
    if vocabulary is not None and objects is not None:
        raise VocabularyError("Give either a vocabulary or objects (with their parts), not both")
    if objects is not None:
        if isinstance(objects, str):
            try:
                mapping = parse_object_parts(objects)
            except ValueError as err:
                raise VocabularyError(f"objects: {err}") from err
        else:
            mapping = objects
        vocab = _part_vocab_from_names(dict(mapping) if isinstance(mapping, Mapping) else mapping, "objects")
        return ResolvedPartVocabulary(vocab, tuple(vocab.object_classes), "custom")
    if vocabulary is None:
        if default is None:
            raise VocabularyError("No vocabulary given and the model has none configured")
        return default
    if isinstance(vocabulary, ResolvedPartVocabulary):
        return vocabulary
    if isinstance(vocabulary, PartVocabulary):
        return ResolvedPartVocabulary(vocabulary, tuple(vocabulary.object_classes), "custom")
    if isinstance(vocabulary, (str, os.PathLike)):
        key = str(vocabulary)
        if key in PART_DATASETS or key in SYNTHETIC_PART_DATASETS:
            ds = get_part_dataset(key)
            return ResolvedPartVocabulary(PartVocabulary(ds.class_names), tuple(ds.obj_classes), key)
        if key.endswith(".json") or os.path.isfile(key):
            if not os.path.isfile(key):
                raise VocabularyError(f"Vocabulary file not found: {key}")
            vocab = _part_vocab_from_names(_read_json_vocabulary(key), key)
            return ResolvedPartVocabulary(vocab, tuple(vocab.object_classes), os.path.basename(key))
        hint = ""
        if ":" in key:
            hint = " (an \"object: part, part\" list goes to objects= / --objects)"
        elif key in SEMANTIC_VOCABULARIES:
            hint = " (that is a semantic vocabulary: use a CAT-Seg config for it)"
        raise VocabularyError(
            f"Unknown part vocabulary {key!r}{hint}; expected one of "
            f"{list(PART_DATASETS) + list(SYNTHETIC_PART_DATASETS)}, a JSON file, or a list of "
            f"\"<object>'s <part>\" names"
        )
    if isinstance(vocabulary, (list, tuple)):
        vocab = _part_vocab_from_names(vocabulary, "vocabulary")
        return ResolvedPartVocabulary(vocab, tuple(vocab.object_classes), "custom")
    raise VocabularyError(f"Unsupported vocabulary type {type(vocabulary).__name__}")


def resolve_semantic_vocabulary(vocabulary: Any = None, classes: Any = None, default: Optional[Sequence[str]] = None):
    """(class names, source name) for CAT-Seg: a semantic dataset key, a JSON list file, a list, or
    ``classes="cat, dog|puppy"`` (see :func:`parse_class_list`)."""
    if vocabulary is not None and classes is not None:
        raise VocabularyError("Give either a vocabulary or classes, not both")
    if classes is not None:
        names = parse_class_list(classes) if isinstance(classes, str) else list(classes)
        return _check_semantic_names(names, "classes"), "custom"
    if vocabulary is None:
        if default is None:
            raise VocabularyError("No vocabulary given and the model has none configured")
        return list(default), "config"
    if isinstance(vocabulary, (list, tuple)):
        return _check_semantic_names(list(vocabulary), "vocabulary"), "custom"
    key = str(vocabulary)
    if key in SEMANTIC_VOCABULARIES:
        return list(get_semantic_classes(key)), key
    if key.endswith(".json") or os.path.isfile(key):
        if not os.path.isfile(key):
            raise VocabularyError(f"Vocabulary file not found: {key}")
        return _check_semantic_names(_read_json_vocabulary(key), key), os.path.basename(key)
    hint = " (that is a part vocabulary: use a PartCATSeg config for it)" if key in PART_DATASETS else ""
    raise VocabularyError(
        f"Unknown semantic vocabulary {key!r}{hint}; expected one of {list(SEMANTIC_VOCABULARIES)}, a JSON "
        f"list file, or classes=\"cat, dog|puppy, grass\""
    )


def _check_semantic_names(names: Any, where: str) -> list[str]:
    if not isinstance(names, list) or not names:
        raise VocabularyError(f"{where}: expected a non-empty list of class names")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise VocabularyError(f"{where}: entry #{i} must be a non-empty string, got {n!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VocabularyError(f"{where}: duplicate class names {duplicates}")
    return list(names)


# ------------------------------------------------------------------------------------------ output
@dataclass
class Prediction:
    """One image's result.

    ``labels`` (H, W) int64 index ``class_names``; -1 = background / no class (Pred-All background,
    outside ``object_mask``). ``confidence`` (H, W) is the score of the chosen label (the background
    score where the label is -1 by background, 0 outside the mask). ``scores`` (C, H, W) are the
    per-class probabilities (-1 on classes excluded by ``object=``), kept when ``keep_scores``.
    """

    labels: np.ndarray
    confidence: np.ndarray
    class_names: list[str]
    scores: Optional[np.ndarray] = None
    source: Optional[str] = None
    object_name: Optional[str] = None
    vocabulary_name: str = "custom"
    extra: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return int(self.labels.shape[1])

    @property
    def label_ids_present(self) -> list[int]:
        ids = np.unique(self.labels)
        return [int(i) for i in ids if i >= 0]

    @property
    def label_names_present(self) -> list[str]:
        return [self.class_names[i] for i in self.label_ids_present]

    def areas(self) -> dict[str, int]:
        """Pixel count of every class present (class-index order)."""
        counts = np.bincount(self.labels[self.labels >= 0].ravel(), minlength=len(self.class_names))
        return {self.class_names[i]: int(counts[i]) for i in self.label_ids_present}

    def mean_scores(self) -> dict[str, float]:
        """Mean confidence over each present class's pixels."""
        flat = self.labels.ravel()
        keep = flat >= 0
        sums = np.bincount(flat[keep], weights=self.confidence.ravel()[keep].astype(np.float64), minlength=len(self.class_names))
        counts = np.bincount(flat[keep], minlength=len(self.class_names))
        return {self.class_names[i]: float(sums[i] / counts[i]) for i in self.label_ids_present}

    def summary(self) -> dict:
        """JSON-ready description: the classes present with their areas and mean scores (largest first)."""
        areas, scores = self.areas(), self.mean_scores()
        total = float(self.height * self.width)
        classes = [
            {
                "id": self.class_names.index(name),
                "name": name,
                "pixels": areas[name],
                "area_fraction": round(areas[name] / total, 6),
                "mean_score": round(scores[name], 6),
            }
            for name in sorted(areas, key=lambda n: (-areas[n], self.class_names.index(n)))
        ]
        unlabeled = int((self.labels < 0).sum())
        return {
            "image": self.source,
            "height": self.height,
            "width": self.width,
            "vocabulary": self.vocabulary_name,
            "num_vocabulary_classes": len(self.class_names),
            "object": self.object_name,
            "unlabeled_pixels": unlabeled,
            "classes": classes,
        }


# ------------------------------------------------------------------------------------------ model
def build_model_with_weights(cfg) -> nn.Module:
    """``build_model(cfg)`` + ``MODEL.WEIGHTS`` (a path or a registry short name), in eval mode."""
    from .checkpoint import Checkpointer
    from .modeling import build_model
    from .weights import resolve_weights

    path = resolve_weights(cfg.MODEL.WEIGHTS)
    model = build_model(cfg)
    if path:
        report = Checkpointer(model).load_weights(path)
        if report.missing or report.shape_mismatch:
            logger.warning("Weights do not cover the whole model; predictions may be poor:\n%s", report.summary())
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model has random weights and its predictions are noise")
    return model.eval()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _working_size(h: int, w: int, max_side: Optional[int]) -> tuple[int, int]:
    if not max_side or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _as_list(x: Any, n: int, what: str, single_types: tuple) -> list:
    """Broadcast a single value to ``n`` images, or check a per-image list."""
    if x is None or isinstance(x, single_types):
        return [x] * n
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise ValueError(f"{what}: got {len(x)} values for {n} images")
        return list(x)
    return [x] * n


class _Predictor(abc.ABC):
    """Input handling, batching and label decoding shared by the part and semantic predictors."""

    model: nn.Module
    vocabulary_name: str = "config"

    def __init__(self, cfg=None, *, model: Optional[nn.Module] = None) -> None:
        if model is None:
            if cfg is None:
                raise ValueError("Give a config (cfg) or a built model (model=...)")
            model = build_model_with_weights(cfg)
        self.model = model.eval()
        self.cfg = cfg

    @property
    @abc.abstractmethod
    def class_names(self) -> list[str]:
        """The current vocabulary's class names."""

    @abc.abstractmethod
    def _decode(self, out: dict, task: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels (H,W) long, confidence (H,W), scores (C,H,W)) at the working size."""

    def _record(self, image: np.ndarray, size: tuple[int, int], task: dict) -> dict:
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return {"image": tensor, "height": size[0], "width": size[1]}

    def _tasks(self, n: int, **kwargs) -> list[dict]:
        return [{} for _ in range(n)]

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int = 1,
        keep_scores: bool = True,
        max_side: Optional[int] = None,
        **kwargs,
    ) -> Iterator[Prediction]:
        """Predictions one by one (images are read and run ``batch_size`` at a time)."""
        images = list(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        tasks = self._tasks(len(images), **kwargs)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            loaded = [load_image(im) for im in chunk]
            chunk_tasks = tasks[start : start + batch_size]
            for (array, _), task in zip(loaded, chunk_tasks):
                if task.get("mask") is not None:
                    task["mask"] = load_mask(task["mask"], array.shape[:2])
            sizes = [_working_size(a.shape[0], a.shape[1], max_side) for a, _ in loaded]
            records = [self._record(a, s, t) for (a, _), s, t in zip(loaded, sizes, chunk_tasks)]
            with torch.no_grad():
                outputs = self.model(records)
            for (array, source), out, task in zip(loaded, outputs, chunk_tasks):
                yield self._finish(array.shape[:2], source, out, task, keep_scores)

    def _finish(self, size: tuple[int, int], source, out: dict, task: dict, keep_scores: bool) -> Prediction:
        labels, confidence, scores = self._decode(out, task)
        h, w = size
        if tuple(labels.shape) != (h, w):  # computed at a reduced working size (max_side)
            labels = F.interpolate(labels[None, None].double(), size=(h, w), mode="nearest")[0, 0].long()
            confidence = F.interpolate(confidence[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            if keep_scores:
                scores = F.interpolate(scores[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        mask = task.get("mask")
        if mask is not None:
            inside = torch.from_numpy(mask).to(labels.device)
            labels = labels.masked_fill(~inside, -1)
            confidence = confidence.masked_fill(~inside, 0.0)
        return Prediction(
            labels=labels.to("cpu", torch.int64).numpy(),
            confidence=_to_numpy(confidence),
            class_names=list(self.class_names),
            scores=_to_numpy(scores) if keep_scores else None,
            source=source,
            object_name=task.get("object"),
            vocabulary_name=self.vocabulary_name,
        )

    def __call__(self, images, *, batch_size: int = 1, keep_scores: bool = True, max_side: Optional[int] = None, **kwargs):
        """Predict one image (-> :class:`Prediction`) or a list of images (-> list).

        ``max_side`` computes the prediction with the longer side reduced to it (labels are then
        resized back, nearest); it bounds memory for large photos.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = list(self.predict_iter(items, batch_size=batch_size, keep_scores=keep_scores, max_side=max_side, **kwargs))
        return results[0] if single else results


_SINGLE_MASK_TYPES = (np.ndarray, torch.Tensor, str, os.PathLike)


class PartPredictor(_Predictor):
    """Part segmentation with PartCATSeg (or part-catseg's CAT-Seg baseline) on any image.

    Args:
        cfg: a config (``partcatseg.config.setup_cfg``); the model is built and ``MODEL.WEIGHTS``
            (a path or a short name from :mod:`partcatseg.weights`) loaded.
        model: an already built model instead of ``cfg``.
        vocabulary / objects: see :func:`resolve_part_vocabulary`; default: the config's test set.
    """

    def __init__(self, cfg=None, *, model: Optional[nn.Module] = None, vocabulary: Any = None, objects: Any = None):
        super().__init__(cfg, model=model)
        if not hasattr(self.model, "test_obj_classes"):
            raise TypeError(
                f"{type(self.model).__name__} is not a part-segmentation model (PartCATSeg or the CAT-Seg "
                f"baseline); use SemanticPredictor for CAT-Seg semantic segmentation"
            )
        self._default = self._current_vocabulary()
        self.vocabulary = self._default
        self.set_vocabulary(vocabulary, objects)

    def _current_vocabulary(self) -> ResolvedPartVocabulary:
        m = self.model
        names = list(m.test_vocab.classes) if hasattr(m, "test_vocab") else list(m.test_class_names)
        return ResolvedPartVocabulary(PartVocabulary(names), tuple(m.test_obj_classes), "config")

    def set_vocabulary(self, vocabulary: Any = None, objects: Any = None) -> ResolvedPartVocabulary:
        """Segment these classes from now on (text features are computed on first use, then cached)."""
        resolved = resolve_part_vocabulary(vocabulary, objects, default=self._default)
        m = self.model
        if hasattr(m, "test_vocab"):  # PartCATSeg
            m.set_test_vocabulary(resolved.vocab, list(resolved.obj_classes))
        else:  # CATSegBaseline takes plain lists
            m.set_test_vocabulary(list(resolved.vocab.classes), list(resolved.obj_classes))
        self.vocabulary = resolved
        return resolved

    @property
    def class_names(self) -> list[str]:
        return self.vocabulary.classes

    @property
    def vocabulary_name(self) -> str:  # type: ignore[override]
        return self.vocabulary.name

    @property
    def object_names(self) -> list[str]:
        return list(self.vocabulary.obj_classes)

    def object_index(self, name: str) -> int:
        """Index of ``name`` in the object list (``object_class`` of the model input)."""
        objects = list(self.vocabulary.obj_classes)
        if name not in objects:
            raise VocabularyError(f"object {name!r} is not in the vocabulary; objects: {objects}")
        if not any(oracle_class_mask(self.class_names, name)):
            raise VocabularyError(f"object {name!r} has no part classes in the vocabulary")
        return objects.index(name)

    def _tasks(self, n: int, object: Any = None, object_mask: Any = None, background: Optional[bool] = None) -> list[dict]:
        objects = _as_list(object, n, "object", (str,))
        masks = _as_list(object_mask, n, "object_mask", _SINGLE_MASK_TYPES)
        tasks = []
        for obj, mask in zip(objects, masks):
            task = {"object": obj, "mask": mask}
            if obj is not None:
                task["object_class"] = self.object_index(obj)
            # A mask says where the object is, so inside it every pixel is one of its parts
            # (Oracle-Obj); without a mask the background competes with the parts (Pred-All).
            task["background"] = (mask is None) if background is None else bool(background)
            tasks.append(task)
        return tasks

    def _record(self, image, size, task):
        record = super()._record(image, size, task)
        if task.get("object_class") is not None:
            record["object_class"] = task["object_class"]
        return record

    def _decode(self, out: dict, task: dict):
        num = len(self.class_names)
        scores = out["sem_seg"].float()  # (C,H,W); -1 on classes of other objects when object_class is set
        if scores.shape[0] != num:
            raise RuntimeError(f"model returned {scores.shape[0]} classes, the vocabulary has {num}")
        all_scores = out.get("sem_seg_all")
        use_bg = task.get("background", True) and all_scores is not None and all_scores.shape[0] == num + 1
        if use_bg:
            stacked = torch.cat([scores, all_scores[num:].float()], dim=0)
            confidence, labels = stacked.max(dim=0)
            labels = labels.masked_fill(labels == num, -1)
        else:
            confidence, labels = scores.max(dim=0)
        return labels, confidence, scores


class SemanticPredictor(_Predictor):
    """Semantic segmentation with CAT-Seg (CVPR 2024) for any list of class names.

    ``vocabulary``: a semantic dataset key (``coco_stuff_171``, ``ade150``, ``ade847``, ``pc59``,
    ``pc459``, ``voc20``, ``voc20b``), a JSON list file or a list; ``classes``: ``"cat, dog|puppy"``.
    Every pixel gets a class (CAT-Seg has no background class); ``object_mask`` restricts labels
    to inside a mask.
    """

    def __init__(self, cfg=None, *, model: Optional[nn.Module] = None, vocabulary: Any = None, classes: Any = None):
        super().__init__(cfg, model=model)
        if not hasattr(self.model, "test_class_names") or hasattr(self.model, "test_obj_classes"):
            raise TypeError(
                f"{type(self.model).__name__} is not CAT-Seg (CVPR 2024) semantic segmentation; use "
                f"PartPredictor for part models"
            )
        self._default_names = list(self.model.test_class_names)
        self._names: list[str] = self._default_names
        self._vocabulary_name = "config"
        self.set_vocabulary(vocabulary, classes)

    def set_vocabulary(self, vocabulary: Any = None, classes: Any = None) -> list[str]:
        names, source = resolve_semantic_vocabulary(vocabulary, classes, default=self._default_names)
        self.model.set_test_vocabulary(names)
        self._names, self._vocabulary_name = names, source
        return names

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    @property
    def vocabulary_name(self) -> str:  # type: ignore[override]
        return self._vocabulary_name

    def _tasks(self, n: int, object_mask: Any = None) -> list[dict]:
        return [{"mask": m} for m in _as_list(object_mask, n, "object_mask", _SINGLE_MASK_TYPES)]

    def _decode(self, out: dict, task: dict):
        scores = out["sem_seg"].float()
        if scores.shape[0] != len(self._names):
            raise RuntimeError(f"model returned {scores.shape[0]} classes, the vocabulary has {len(self._names)}")
        confidence, labels = scores.max(dim=0)
        return labels, confidence, scores


def build_predictor(cfg, **kwargs) -> Union[PartPredictor, SemanticPredictor]:
    """The predictor matching ``cfg``'s model: :class:`PartPredictor` for part models, else semantic."""
    model = build_model_with_weights(cfg)
    if hasattr(model, "test_obj_classes"):
        return PartPredictor(cfg, model=model, **kwargs)
    return SemanticPredictor(cfg, model=model, **kwargs)
