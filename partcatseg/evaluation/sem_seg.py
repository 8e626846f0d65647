"""Semantic-segmentation evaluators for CAT-Seg's benchmarks (ADE/PC/VOC/COCO-Stuff).

Follows detectron2's evaluator protocol (``reset`` / ``process`` / ``evaluate``) without detectron2.
Metric = detectron2 master (means over classes with GT), see :func:`metrics.semseg_metrics`.

Also home of the small helpers shared with :mod:`part_seg` (cross-process sum, GT loading, argmax).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .metrics import confusion_matrix, semseg_metrics
from .tables import semseg_table, write_json, write_semseg_per_class_csv

__all__ = ["SemSegEvaluator", "VOCbSemSegEvaluator", "load_sem_seg_gt"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# helpers shared with part_seg.py
# ----------------------------------------------------------------------------------------------
def _dist_active(distributed: bool) -> bool:
    return bool(distributed) and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _is_main_process(distributed: bool) -> bool:
    return not _dist_active(distributed) or dist.get_rank() == 0


def _sum_across_processes(arrays: Sequence[np.ndarray], distributed: bool) -> List[np.ndarray]:
    """All-reduce (sum) int64 arrays over ranks; a no-op in a single process.

    Every rank receives the total, so every rank can compute (and return) the same metrics.
    NCCL only reduces CUDA tensors, gloo/mpi CPU ones: pick the device from the backend.
    """
    if not _dist_active(distributed):
        return [np.asarray(a) for a in arrays]
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = torch.cat([torch.as_tensor(np.asarray(a, dtype=np.int64)).reshape(-1) for a in arrays]).to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu().numpy()
    out, start = [], 0
    for a in arrays:
        a = np.asarray(a)
        out.append(flat[start:start + a.size].reshape(a.shape))
        start += a.size
    return out


def _argmax_labels(scores: Any, key: str, num_channels: Optional[int] = None) -> torch.Tensor:
    """``argmax`` over the class axis of a (C,H,W) score map, returned as a CPU int64 (H,W) tensor.

    torch's argmax returns the first maximal index on ties, as the official evaluators do.
    """
    t = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores))
    if t.dim() != 3:
        raise ValueError(f"outputs[{key!r}] must be a (C, H, W) score map, got shape {tuple(t.shape)}")
    if num_channels is not None and t.shape[0] != num_channels:
        raise ValueError(f"outputs[{key!r}] has {t.shape[0]} channels, expected {num_channels}")
    return t.argmax(dim=0).to("cpu", torch.int64)


def _as_label_tensor(x: Any, what: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2:
        raise ValueError(f"{what} must be a 2-D (H, W) label map, got shape {tuple(t.shape)}")
    return t.to("cpu", torch.int64)


def load_sem_seg_gt(path: str) -> np.ndarray:
    """Read a label map (8/16-bit PNG or TIFF) as int64 at its stored resolution."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ground-truth label file not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"):
            raise ValueError(f"{path}: expected a single-channel label map, got PIL mode {im.mode!r}")
        arr = np.array(im)
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{path}: float label map contains non-integer values")
    return arr.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# evaluators
# ----------------------------------------------------------------------------------------------
def _check_vocabulary(owner: str, class_names: Sequence[str], ignore_label: int) -> Tuple[List[str], int]:
    """Validated (class names, ignore label) of an evaluator: per-class result keys need unique,
    non-empty names, and the ignore label must not be a class index."""
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError(f"{owner}: class_names is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: class_names contains duplicates (per-class keys would collide)")
    ignore_label = int(ignore_label)
    if 0 <= ignore_label < len(names):
        raise ValueError(f"ignore_label={ignore_label} is a valid class index (num_classes={len(names)})")
    return names, ignore_label


class SemSegEvaluator:
    """Confusion-matrix evaluator for per-pixel class predictions against full-image GT.

    Per record: ``pred = argmax(outputs[i]["sem_seg"])`` (C,H,W), GT from ``inputs[i]["sem_seg_gt"]``
    (an (H,W) array) or read from ``inputs[i]["sem_seg_file_name"]``, both at **original resolution**
    (the prediction must already be at that size). GT pixels equal to ``ignore_label`` go to bin N.

    With ``distributed=True`` and an initialised process group, matrices are summed over ranks;
    every rank returns the metrics, only rank 0 writes files.
    """

    result_key = "sem_seg"
    file_prefix = "sem_seg"

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_label: int = 255,
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ) -> None:
        self.class_names, self.ignore_label = _check_vocabulary("SemSegEvaluator", class_names, ignore_label)
        self.num_classes = len(self.class_names)
        self.output_dir = output_dir
        self.distributed = distributed
        self.reset()

    @classmethod
    def from_metadata(cls, metadata: Any, output_dir: Optional[str] = None, distributed: bool = True):
        """Build from a detectron2-style Metadata (``stuff_classes``, ``ignore_label``)."""
        return cls(
            class_names=list(metadata.stuff_classes),
            ignore_label=getattr(metadata, "ignore_label", 255),
            output_dir=output_dir,
            distributed=distributed,
        )

    def reset(self) -> None:
        n1 = self.num_classes + 1
        self._conf = np.zeros((n1, n1), dtype=np.int64)
        self._num_records = 0

    def _map_prediction(self, pred: np.ndarray) -> np.ndarray:
        """Hook for dataset-specific prediction remapping (see :class:`VOCbSemSegEvaluator`)."""
        return pred

    def _load_gt(self, record: Mapping[str, Any]) -> Tuple[np.ndarray, str]:
        if "sem_seg_gt" in record and record["sem_seg_gt"] is not None:
            gt = record["sem_seg_gt"]
            gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
            return gt.astype(np.int64), str(record.get("file_name", "<sem_seg_gt>"))
        if "sem_seg_file_name" in record:
            path = record["sem_seg_file_name"]
            return load_sem_seg_gt(path), str(path)
        raise KeyError(
            "SemSegEvaluator.process: each input needs 'sem_seg_gt' (H, W array) or 'sem_seg_file_name'; "
            f"got keys {sorted(record)}"
        )

    def process(self, inputs: Iterable[Mapping[str, Any]], outputs: Iterable[Mapping[str, Any]]) -> None:
        for record, output in zip(inputs, outputs):
            pred = self._map_prediction(_argmax_labels(output["sem_seg"], "sem_seg").numpy())
            gt, source = self._load_gt(record)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"{source}: GT shape {gt.shape} != prediction shape {pred.shape}; the prediction must "
                    "be at the original image resolution"
                )
            if pred.size and pred.max() >= self.num_classes:
                raise ValueError(
                    f"{source}: predicted class {int(pred.max())} >= num_classes {self.num_classes}; "
                    "the model vocabulary is larger than the evaluator's class list"
                )
            gt = gt.copy()
            gt[gt == self.ignore_label] = self.num_classes
            bad = (gt < 0) | (gt > self.num_classes)
            if bad.any():
                raise ValueError(
                    f"{source}: GT contains labels {sorted(np.unique(gt[bad]).tolist())[:10]} outside "
                    f"[0, {self.num_classes - 1}] and the ignore label {self.ignore_label}"
                )
            self._conf += confusion_matrix(pred, gt, self.num_classes)
            self._num_records += 1

    def _reduced(self) -> Tuple[np.ndarray, int]:
        conf, count = _sum_across_processes([self._conf, np.array([self._num_records])], self.distributed)
        return conf, int(count[0])

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        conf, count = self._reduced()
        if count == 0:
            raise RuntimeError(
                f"{type(self).__name__}.evaluate(): no records were processed (on any rank); "
                "check the dataset/loader — refusing to report metrics for an empty evaluation"
            )
        res = semseg_metrics(conf, self.class_names)
        results: "OrderedDict[str, Dict[str, float]]" = OrderedDict([(self.result_key, res)])
        logger.debug("%s on %d images:\n%s", type(self).__name__, count, semseg_table(results))
        if self.output_dir and _is_main_process(self.distributed):
            os.makedirs(self.output_dir, exist_ok=True)
            write_json(
                os.path.join(self.output_dir, f"{self.file_prefix}_results.json"),
                {"num_records": count, **results},
            )
            write_semseg_per_class_csv(
                os.path.join(self.output_dir, f"{self.file_prefix}_per_class.csv"), self.class_names, res
            )
            np.save(os.path.join(self.output_dir, f"{self.file_prefix}_confusion.npy"), conf)
        return results


class VOCbSemSegEvaluator(SemSegEvaluator):
    """PASCAL VOC "with background" (PAS-20b): every prediction ``>= background_index`` becomes background.

    The model's vocabulary has extra background-like names after the 20 VOC classes; the GT has
    21 classes (background = 20). Mirrors CAT-Seg's ``VOCbEvaluator``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_label: int = 255,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        background_index: int = 20,
    ) -> None:
        if len(class_names) != background_index + 1:
            raise ValueError(
                f"VOCbSemSegEvaluator expects {background_index + 1} classes (background last), "
                f"got {len(class_names)}"
            )
        self.background_index = int(background_index)
        super().__init__(class_names, ignore_label, output_dir, distributed)

    def _map_prediction(self, pred: np.ndarray) -> np.ndarray:
        pred = pred.copy()
        pred[pred >= self.background_index] = self.background_index
        return pred
