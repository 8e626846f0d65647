"""Segment your own images with your own vocabulary: no dataset, no ground truth.

The official PartCATSeg inference reads the ground-truth object of every image, even in Pred-All.
Here the vocabulary and (optionally) the object are plain inputs, and any meta-architecture works
through the model protocol (:class:`~partcatseg.modeling.SegmentationModel`):

    from partcatseg.config import setup_cfg
    from partcatseg.inference import Predictor

    cfg = setup_cfg("configs/zero_shot/partcatseg_voc.yaml", ["MODEL.WEIGHTS", "partcatseg_voc"])
    predictor = Predictor(cfg, objects="cat: head, ear, eye, torso, leg, tail; dog: head, ear")
    pred = predictor("cat.jpg")                          # Pred-All: every class + background
    pred = predictor("cat.jpg", object="cat")            # Oracle-style: only the cat's classes
    pred = predictor("cat.jpg", object="cat", object_mask=mask)  # ... and only inside the mask
    pred.labels, pred.scores, pred.class_names, pred.label_names_present

Semantic models (CAT-Seg) take ``classes="cat, dog|puppy, grass"`` instead of ``objects``. Text
features are computed once per vocabulary and cached by the model; images run ``batch_size`` at a time.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..vocab import Vocabulary, VocabularyError, oracle_class_mask, resolve_vocabulary
from .io import ImageInput, load_image, load_mask
from .result import Prediction

__all__ = ["Predictor", "PartPredictor", "SemanticPredictor", "build_model_with_weights", "working_size"]

logger = logging.getLogger(__name__)

_SINGLE_MASK_TYPES = (np.ndarray, torch.Tensor, str, os.PathLike)


def build_model_with_weights(cfg):
    """``build_model(cfg)`` + ``MODEL.WEIGHTS`` (a path or a registry short name), in eval mode."""
    from ..checkpoint import Checkpointer
    from ..modeling import build_model
    from ..weights import resolve_weights

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


def working_size(h: int, w: int, max_side: Optional[int]) -> tuple[int, int]:
    """(H, W) an image of ``h`` x ``w`` is predicted at: the longer side reduced to ``max_side`` (None/0: as is)."""
    if not max_side or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))



def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W, 3) uint8 resized to ``size`` (H, W) with PIL's bilinear filter (area-weighted when shrinking)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    return np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))  # a writable copy


def _as_list(x: Any, n: int, what: str, single_types: tuple) -> list:
    """Broadcast a single value to ``n`` images, or check a per-image list."""
    if x is None or isinstance(x, single_types):
        return [x] * n
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise ValueError(f"{what}: got {len(x)} values for {n} images")
        return list(x)
    return [x] * n


class Predictor:
    """Any meta-architecture on any image and vocabulary.

    Args:
        cfg: a config (``partcatseg.config.setup_cfg``); the model is built and ``MODEL.WEIGHTS``
            (a path or a short name from :mod:`partcatseg.weights`) loaded.
        model: an already built :class:`~partcatseg.modeling.SegmentationModel` instead of ``cfg``.
        vocabulary / objects / classes: see :func:`partcatseg.vocab.resolve_vocabulary`
            (``objects`` for part models, ``classes`` for semantic ones); default: the config's test set.
    """

    #: Restricts the task of the model (PartPredictor / SemanticPredictor); None accepts any.
    required_task: Optional[str] = None

    def __init__(self, cfg=None, *, model=None, vocabulary: Any = None, objects: Any = None, classes: Any = None):
        from ..modeling import SegmentationModel

        if model is None:
            if cfg is None:
                raise ValueError("Give a config (cfg) or a built model (model=...)")
            model = build_model_with_weights(cfg)
        if not isinstance(model, SegmentationModel):
            raise TypeError(f"{type(model).__name__} is not a partcatseg.modeling.SegmentationModel")
        if self.required_task is not None and model.task != self.required_task:
            other = {"part": "PartPredictor", "semantic": "SemanticPredictor"}[model.task]
            raise TypeError(f"{type(model).__name__} is a {model.task} model; use {other} (or Predictor)")
        self.model = model.eval()
        self.cfg = cfg
        self.source = None  # where from_pretrained found the model (a PretrainedSource)
        self._default = model.vocabulary
        self.vocabulary = self._default
        self.set_vocabulary(vocabulary, objects=objects, classes=classes)

    @classmethod
    def from_pretrained(cls, name_or_path, *, device: Optional[str] = None, vocabulary: Any = None,
                        objects: Any = None, classes: Any = None, opts=(), **kwargs: Any) -> "Predictor":
        """A predictor for a weights name (``partcatseg_voc``), a pretrained folder, a checkpoint with a
        ``config.yaml`` beside it, or a Hugging Face repository id (``org/repo``).

        See :func:`partcatseg.inference.hub.from_pretrained` for the forms and ``kwargs``
        (``revision``, ``cache_dir``, ``local_files_only``, ``config_file``). ``.source`` says where
        the model came from.
        """
        from .hub import load_pretrained

        loaded = load_pretrained(name_or_path, device=device, opts=opts, **kwargs)
        predictor = cls(loaded.cfg, model=loaded.model, vocabulary=vocabulary, objects=objects, classes=classes)
        predictor.source = loaded.source
        return predictor

    @property
    def task(self) -> str:
        return self.model.task

    def set_vocabulary(self, vocabulary: Any = None, *, objects: Any = None, classes: Any = None) -> Vocabulary:
        """Segment these classes from now on (text features are computed on first use, then cached)."""
        resolved = resolve_vocabulary(vocabulary, objects=objects, classes=classes, task=self.task, default=self._default)
        self.model.set_vocabulary(resolved)
        self.vocabulary = resolved
        return resolved

    @property
    def class_names(self) -> list[str]:
        return list(self.vocabulary.classes)

    @property
    def vocabulary_name(self) -> str:
        return "config" if self.vocabulary is self._default else self.vocabulary.name

    @property
    def object_names(self) -> list[str]:
        return list(self.vocabulary.objects)

    def object_index(self, name: str) -> int:
        """Index of ``name`` in the object list (``object_class`` of the model input)."""
        if self.task != "part":
            raise VocabularyError("object= needs a part model; semantic segmentation has no objects")
        objects = self.object_names
        if name not in objects:
            raise VocabularyError(f"object {name!r} is not in the vocabulary; objects: {objects}")
        if not any(oracle_class_mask(self.class_names, name)):
            raise VocabularyError(f"object {name!r} has no part classes in the vocabulary")
        return objects.index(name)

    # ------------------------------------------------------------------ per-image work
    def _tasks(self, n: int, object: Any = None, object_mask: Any = None, background: Optional[bool] = None) -> list[dict]:
        objects = _as_list(object, n, "object", (str,))
        masks = _as_list(object_mask, n, "object_mask", _SINGLE_MASK_TYPES)
        tasks = []
        for obj, mask in zip(objects, masks):
            task: dict[str, Any] = {"object": obj, "mask": mask}
            if obj is not None:
                task["object_class"] = self.object_index(obj)
            # A mask says where the object is, so inside it every pixel is one of its parts
            # (Oracle-Obj); without a mask the background competes with the parts (Pred-All).
            task["background"] = (mask is None) if background is None else bool(background)
            tasks.append(task)
        return tasks

    def _record(self, image: np.ndarray, size: tuple[int, int], task: dict) -> dict:
        if self.model.input_format == "BGR":
            image = image[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        record = {"image": tensor, "height": size[0], "width": size[1]}
        if task.get("object_class") is not None:
            record["object_class"] = task["object_class"]
        return record

    def _decode(self, out: dict, task: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels (H,W) long, confidence (H,W), scores (C,H,W)) at the working size; -1 = background."""
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

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int = 1,
        keep_scores: bool = True,
        max_side: Optional[int] = None,
        **kwargs: Any,
    ) -> Iterator[Prediction]:
        """Predictions one by one (images are read and run ``batch_size`` at a time).

        Keyword arguments: ``object`` (part models; one name or one per image), ``object_mask``,
        ``background`` (part models: let background compete; default: only without a mask).
        """
        images = list(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.task != "part" and (kwargs.get("object") is not None or kwargs.get("background") is not None):
            raise VocabularyError("object= / background= need a part model; semantic segmentation has no objects")
        tasks = self._tasks(len(images), **kwargs)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            loaded = [load_image(im) for im in chunk]
            chunk_tasks = tasks[start : start + batch_size]
            for (array, _), task in zip(loaded, chunk_tasks):
                if task.get("mask") is not None:
                    task["mask"] = load_mask(task["mask"], array.shape[:2])
            sizes = [working_size(a.shape[0], a.shape[1], max_side) for a, _ in loaded]
            # the model sees the reduced image (bounded time and memory); outputs return to the input's size
            records = [self._record(_resize_image(a, s), s, t) for (a, _), s, t in zip(loaded, sizes, chunk_tasks)]
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

        ``max_side`` computes the prediction on the image with its longer side reduced to it
        (labels are then resized back, nearest; confidences and scores bilinear); it bounds time
        and memory for large photos.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = list(self.predict_iter(items, batch_size=batch_size, keep_scores=keep_scores, max_side=max_side, **kwargs))
        return results[0] if single else results


class PartPredictor(Predictor):
    """A :class:`Predictor` that accepts part models only (PartCATSeg, the CAT-Seg baseline, ...)."""

    required_task = "part"


class SemanticPredictor(Predictor):
    """A :class:`Predictor` that accepts semantic models only (CAT-Seg CVPR 2024)."""

    required_task = "semantic"
