"""The model protocol: what every meta-architecture offers to prediction, evaluation, training and tools.

Prediction (:mod:`partcatseg.inference`), the evaluation runner, ``train_net.py``, the benchmark and the
demo talk to a model only through :class:`SegmentationModel`; a new method plugs in by subclassing it
and registering with :data:`META_ARCH_REGISTRY` (``docs/ARCHITECTURE.md`` has a worked example).

Inputs (detectron2 dataset dicts, one per image):
    ``image``: uint8 (3, H, W) tensor in :attr:`SegmentationModel.input_format` channel order;
    ``height`` / ``width``: the size the outputs are returned at (default: the image's);
    ``object_class`` (optional): Oracle-Obj, the index of the image's object in ``vocabulary.objects``
    (detectron2's ``instances.gt_classes[0]`` is read too);
    training only: ``sem_seg`` (object ids for part models, class ids for semantic models) and, for part
    models, ``obj_part_sem_seg`` (object-specific part ids), both (H, W) int64 with the dataset's ignore id.

Outputs:
    training: a dict of scalars; keys starting with ``loss`` are summed and optimised, every other
    key is a detached term that is logged (e.g. ``term_part_obj``);
    inference: one dict per image with ``sem_seg`` (C, height, width) scores of the C vocabulary classes
    (part models: classes of other objects score -1 when ``object_class`` is given) and, for part
    models, ``sem_seg_all`` (C + 1, height, width) with the background last (Pred-All).
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Collection, Optional

import torch
from fvcore.common.registry import Registry
from torch import nn

from ..vocab import TASKS, Vocabulary, oracle_class_mask

__all__ = ["META_ARCH_REGISTRY", "SegmentationModel", "record_object_index", "oracle_scores", "INPUT_FORMATS"]

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = "Meta-architecture classes keyed by their MODEL.META_ARCHITECTURE name."

INPUT_FORMATS = ("RGB", "BGR")


class SegmentationModel(nn.Module, abc.ABC):
    """Base class (and contract) of every meta-architecture; see the module docstring for the I/O.

    Sub-classes set :attr:`task`, call ``super().__init__(train_vocabulary=..., test_vocabulary=...)``,
    implement :meth:`forward` and :meth:`prepare_vocabulary`, and provide ``from_config(cfg) -> dict``
    (constructor keyword arguments from a config; the only place that reads config keys).
    """

    #: "part": outputs ``sem_seg`` + ``sem_seg_all`` and honours ``object_class``; "semantic": ``sem_seg`` only.
    task: ClassVar[str] = "part"
    #: Where class-name text features come from (``TextFeatureCache``-like: ``get(clip, names, templates,
    #: synonyms)``); None for a model without text features. Tools may swap it (benchmark ``--random-text``).
    text_cache: Any = None
    #: Activation checkpointing in training (see :meth:`set_grad_checkpointing`).
    grad_checkpointing: bool = False

    def __init__(self, *, train_vocabulary: Vocabulary, test_vocabulary: Vocabulary, input_format: str = "RGB") -> None:
        super().__init__()
        if self.task not in TASKS:
            raise TypeError(f"{type(self).__name__}.task={self.task!r}; expected one of {list(TASKS)}")
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format={input_format!r}; expected one of {list(INPUT_FORMATS)}")
        self.input_format = input_format
        self.train_vocabulary = self._check_vocabulary(train_vocabulary)
        self._vocabulary = self._check_vocabulary(test_vocabulary)

    @classmethod
    def from_config(cls, cfg: Any) -> dict:
        """Constructor keyword arguments from a config (detectron2's ``from_config`` pattern)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config: it defines no from_config")

    # ----------------------------------------------------------------- vocabulary
    def _check_vocabulary(self, vocabulary: Vocabulary) -> Vocabulary:
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"{type(self).__name__} needs a partcatseg.vocab.Vocabulary, got {type(vocabulary).__name__}")
        if self.task == "part":
            vocabulary.require_parts(f"{type(self).__name__} (a part model)")
        return vocabulary

    @property
    def vocabulary(self) -> Vocabulary:
        """What inference segments (the test vocabulary)."""
        return self._vocabulary

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Segment ``vocabulary`` from now on (no retraining: the vocabulary is an input)."""
        self._vocabulary = self._check_vocabulary(vocabulary)

    @abc.abstractmethod
    def prepare_vocabulary(self, vocabulary: Optional[Vocabulary] = None, *, refresh: bool = False) -> None:
        """Compute (or read from the cache) the text features of ``vocabulary`` (default: the current one) now.

        ``refresh`` first forgets what is held in memory, as a new process would (the disk cache stays).
        Inference calls this itself; callers use it to pay the cost up front (servers, benchmarks).
        """

    def load_pretrained(self, missing: Optional[Collection[str]] = None) -> list[str]:
        """Training from scratch: load pretrained encoders for what the checkpoint did not provide.

        ``missing``: the keys the checkpoint load left unset (None: no checkpoint was loaded).
        Returns the files read; the default (a model without pretrained encoders) reads none.
        """
        return []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing in training on or off (``MODEL.GRADIENT_CHECKPOINTING``).

        Checkpointed parts keep only their inputs for the backward pass and run their forward again
        there: less memory, same gradients.  Models that support it override this.
        """
        if enable:
            raise NotImplementedError(f"{type(self).__name__} does not support activation checkpointing")
        self.grad_checkpointing = False

    def describe(self) -> dict[str, Any]:
        """A few facts for logs and benchmark reports (sub-classes add their own)."""
        vocab = self.vocabulary
        facts: dict[str, Any] = {"meta_architecture": type(self).__name__, "task": self.task, "classes": len(vocab)}
        if vocab.has_parts:
            facts.update(objects=len(vocab.objects), generalized_parts=len(vocab.part_classes),
                         generalized_objects=len(vocab.object_classes))
        if self.grad_checkpointing:
            facts["grad_checkpointing"] = True
        return facts

    def profile_stages(self) -> dict[str, list[tuple[Any, str]]]:
        """The stages of an inference forward, for the benchmark's per-stage profile (``--phases stages``).

        A stage name maps to the call points that make it up: ``(object, method name)`` pairs, e.g.
        ``(self, "extract_features")`` or ``(block, "forward")``. The profiler wraps each point on its
        instance for the duration of the profile and charges every call to its stage (time spent in a
        nested point goes to the inner one); whatever no point covers is reported as "other".
        The default declares none: only the whole forward is measured.
        """
        return {}

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")


def record_object_index(record: dict) -> Optional[int]:
    """The Oracle-Obj object of a record: ``object_class``, else detectron2 ``instances.gt_classes[0]``."""
    if record.get("object_class") is not None:
        return int(record["object_class"])
    gt = getattr(record.get("instances"), "gt_classes", None)
    if gt is not None and len(gt):
        return int(gt[0])
    return None


def oracle_scores(scores: torch.Tensor, vocabulary: Vocabulary, object_index: Optional[int]) -> torch.Tensor:
    """(C, H, W) class scores with Oracle-Obj applied: classes not naming the object score -1.

    The official substring rule (:func:`partcatseg.vocab.oracle_class_mask`); ``object_index`` None
    leaves the scores unchanged. A record without an object pixel carries ``-1``, which the official
    code (and so this) uses as a Python index: the last object.
    """
    if object_index is None:
        return scores
    if not -len(vocabulary.objects) <= object_index < len(vocabulary.objects):
        raise IndexError(
            f"object_class={object_index} but the vocabulary {vocabulary.name!r} has {len(vocabulary.objects)} objects"
        )
    keep = oracle_class_mask(vocabulary.classes, vocabulary.objects[object_index])
    if len(keep) != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score maps for a vocabulary of {len(keep)} classes")
    # Fill with -1 and copy the kept classes (a few of them): half the memory traffic of
    # torch.where over the full-size maps, same values.
    out = scores.new_full(scores.shape, -1.0)
    kept = torch.as_tensor([i for i, k in enumerate(keep) if k], dtype=torch.long, device=scores.device)
    if kept.numel():
        out[kept] = scores[kept]
    return out
