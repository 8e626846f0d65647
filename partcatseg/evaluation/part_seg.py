"""Part-segmentation evaluator: the OV-PARTS "Oracle-Obj" and "Pred-All" settings.

Each record is one (image, object) pair of the flattened per-object test set. Per record
(PartCATSeg ``partcatseg_evaluation.py``):

1. ``pred = argmax(outputs["sem_seg"])`` — (C,H,W) part scores with disallowed classes at -1 and no
   background (Oracle-Obj); ``pred_all = argmax(outputs["sem_seg_all"])`` — (C+1,H,W), background last.
2. GT part map at the *mapper's* resolution (already restricted to the conditioned object, ignore
   elsewhere) is nearest-resized (torch legacy ``mode="nearest"``) to the prediction size. The mapper's
   own resize is the first of the two GT resizes; this is the second.
3. Outside the GT (``gt == ignore``) both predictions go to bin N; background predictions (index C = N)
   stay in bin N, i.e. they count as misses in Pred-All.
4. Two ``(N+1)²`` confusion matrices; Oracle-Obj is scored on the ``N×N`` block, Pred-All on the full
   matrix (``include_last_class=True``).

Result layout (returned and written to ``part_seg_results.json``)::

    OrderedDict(
        oracle_obj={"partcatseg": {...}, "ovparts": {...}},
        pred_all={"partcatseg": {...}, "ovparts": {...}},
    )

See :mod:`partcatseg.evaluation.metrics` for the two definitions.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import compute_metrics, confusion_matrix
from .sem_seg import _argmax_labels, _as_label_tensor, _check_vocabulary, _is_main_process, _sum_across_processes
from .tables import summary_table, write_json, write_part_per_class_csv

__all__ = ["PartSegEvaluator", "resize_gt_nearest", "SETTINGS"]

logger = logging.getLogger(__name__)

#: result keys of the two OV-PARTS settings, with their display names
SETTINGS = OrderedDict([("oracle_obj", "Oracle-Obj"), ("pred_all", "Pred-All")])


def resize_gt_nearest(gt: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-resize an (h,w) label map to ``size`` with torch's legacy ``"nearest"`` rule.

    Legacy nearest picks source index ``floor(dst * in/out)`` (not the half-pixel "nearest-exact").
    Interpolating in float64 keeps every label (incl. 65535) exact.
    """
    gt = _as_label_tensor(gt, "GT part map")
    if tuple(gt.shape) == tuple(size):
        return gt.clone()
    out = F.interpolate(gt.to(torch.float64)[None, None], size=tuple(int(s) for s in size), mode="nearest")
    return out[0, 0].to(torch.int64)


class PartSegEvaluator:
    """Oracle-Obj / Pred-All part-segmentation evaluator (detectron2 evaluator interface).

    Args:
        class_names: the N object-specific part names of the test set ("obj's part").
        base_class_indices: indices (into ``class_names``) of seen/base classes; ``None`` = no
            seen/unseen split (then no ``mIoU-base``/``h-IoU`` keys).
        ignore_label: GT value meaning "not scored" (255 Pascal, 65535 ADE/PartImageNet).
        output_dir: where rank 0 writes ``part_seg_results.json``, ``part_seg_per_class.csv`` and
            ``part_seg_confusion.npz``; ``None`` = write nothing.
        distributed: sum matrices over ranks when a process group is initialised.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        base_class_indices: Optional[Sequence[int]] = None,
        ignore_label: int = 255,
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ) -> None:
        self.class_names, self.ignore_label = _check_vocabulary("PartSegEvaluator", class_names, ignore_label)
        self.num_classes = len(self.class_names)
        self.base_class_indices: Optional[list] = None
        if base_class_indices is not None:
            idx = [int(i) for i in base_class_indices]
            bad = [i for i in idx if not 0 <= i < self.num_classes]
            if bad:
                raise ValueError(f"base_class_indices {bad[:10]} out of range [0, {self.num_classes - 1}]")
            self.base_class_indices = idx
        self.output_dir = output_dir
        self.distributed = distributed
        self.reset()

    @classmethod
    def from_metadata(cls, metadata: Any, output_dir: Optional[str] = None, distributed: bool = True):
        """Build from a detectron2-style Metadata: ``stuff_classes``, ``evaluation_set["base"]``, ``ignore_label``."""
        evaluation_set = getattr(metadata, "evaluation_set", None) or {}
        return cls(
            class_names=list(metadata.stuff_classes),
            base_class_indices=evaluation_set.get("base"),
            ignore_label=getattr(metadata, "ignore_label", 255),
            output_dir=output_dir,
            distributed=distributed,
        )

    @property
    def evaluation_set(self) -> Optional[Dict[str, list]]:
        return None if self.base_class_indices is None else {"base": self.base_class_indices}

    def reset(self) -> None:
        n1 = self.num_classes + 1
        self._conf = {key: np.zeros((n1, n1), dtype=np.int64) for key in SETTINGS}
        self._num_records = 0

    # ------------------------------------------------------------------------------------------
    def _gt_part_map(self, record: Mapping[str, Any]) -> torch.Tensor:
        """GT part labels at the mapper's resolution: ``obj_part_sem_seg`` or painted instances."""
        if record.get("obj_part_sem_seg") is not None:
            return _as_label_tensor(record["obj_part_sem_seg"], "inputs[i]['obj_part_sem_seg']")
        inst = record.get("obj_part_instances")
        if inst is not None:
            masks = getattr(inst.gt_masks, "tensor", inst.gt_masks)  # detectron2 BitMasks or a plain array
            masks = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
            classes = torch.as_tensor(np.asarray(inst.gt_classes)).reshape(-1)
            if masks.dim() != 3 or len(masks) == 0:
                raise ValueError(
                    f"{record.get('file_name', '<record>')}: obj_part_instances has no (K,H,W) masks"
                )
            gt = torch.full(masks.shape[-2:], self.ignore_label, dtype=torch.int64)
            for m, c in zip(masks.bool(), classes.tolist()):
                gt[m] = int(c)  # later masks overwrite earlier ones, as in the official painting loop
            return gt
        raise KeyError(
            "PartSegEvaluator.process: each input needs 'obj_part_sem_seg' (H, W labels at the mapper's "
            f"resolution) or 'obj_part_instances'; got keys {sorted(record)}"
        )

    def process(self, inputs: Iterable[Mapping[str, Any]], outputs: Iterable[Mapping[str, Any]]) -> None:
        n = self.num_classes
        for record, output in zip(inputs, outputs):
            source = str(record.get("file_name", "<record>"))
            if "sem_seg" not in output or "sem_seg_all" not in output:
                raise KeyError(
                    f"{source}: PartSegEvaluator needs outputs 'sem_seg' (C,H,W Oracle-masked) and "
                    f"'sem_seg_all' (C+1,H,W with background last); got {sorted(output)}"
                )
            pred = _argmax_labels(output["sem_seg"], "sem_seg", n)
            pred_all = _argmax_labels(output["sem_seg_all"], "sem_seg_all", n + 1)
            self.process_labels(record, pred, pred_all)

    def process_labels(self, record: Mapping[str, Any], pred: torch.Tensor, pred_all: torch.Tensor) -> None:
        """Accumulate one record from label maps (H, W) at the original image size.

        ``pred`` holds Oracle-Obj labels in [0, N); ``pred_all`` Pred-All labels in [0, N] where N is
        the background.  Any other value (e.g. 255 "no class" in a saved PNG) counts as a miss.
        Used by :meth:`process` and by ``tools/evaluate_predictions.py``.
        """
        n = self.num_classes
        source = str(record.get("file_name", "<record>"))
        pred = torch.as_tensor(pred).long()
        pred_all = torch.as_tensor(pred_all).long()
        pred = pred.masked_fill((pred < 0) | (pred >= n), n)
        pred_all = pred_all.masked_fill((pred_all < 0) | (pred_all > n), n)
        if pred.shape != pred_all.shape:
            raise ValueError(
                f"{source}: 'sem_seg' is {tuple(pred.shape)} but 'sem_seg_all' is {tuple(pred_all.shape)}"
            )
        gt = resize_gt_nearest(self._gt_part_map(record), tuple(pred.shape))
        ignored = gt == self.ignore_label
        bad = ~ignored & ((gt < 0) | (gt >= n))
        if bad.any():
            raise ValueError(
                f"{source}: GT part labels {sorted(torch.unique(gt[bad]).tolist())[:10]} outside "
                f"[0, {n - 1}] and the ignore label {self.ignore_label}"
            )
        pred = pred.masked_fill(ignored, n)
        pred_all = pred_all.masked_fill(ignored, n)  # background (index n) is already in bin n
        gt = gt.masked_fill(ignored, n)
        gt_np = gt.numpy()
        self._conf["oracle_obj"] += confusion_matrix(pred.numpy(), gt_np, n)
        self._conf["pred_all"] += confusion_matrix(pred_all.numpy(), gt_np, n)
        self._num_records += 1

    # ------------------------------------------------------------------------------------------
    def confusion_matrices(self) -> Tuple[Dict[str, np.ndarray], int]:
        """Matrices and record count summed over ranks (collective: call on every rank)."""
        keys = list(SETTINGS)
        summed = _sum_across_processes(
            [self._conf[k] for k in keys] + [np.array([self._num_records])], self.distributed
        )
        return dict(zip(keys, summed[:-1])), int(summed[-1][0])

    def evaluate(self) -> "OrderedDict[str, Dict[str, Dict[str, float]]]":
        conf, count = self.confusion_matrices()
        if count == 0:
            raise RuntimeError(
                "PartSegEvaluator.evaluate(): no records were processed (on any rank); check the dataset "
                "and mapper (records without part GT are skipped) — refusing to report metrics"
            )
        results: "OrderedDict[str, Dict[str, Dict[str, float]]]" = OrderedDict()
        results["oracle_obj"] = compute_metrics(conf["oracle_obj"], self.class_names, False, self.evaluation_set)
        results["pred_all"] = compute_metrics(conf["pred_all"], self.class_names, True, self.evaluation_set)
        logger.debug("Part segmentation on %d records:\n%s", count, summary_table(results))  # the runner prints the table
        if self.output_dir and _is_main_process(self.distributed):
            os.makedirs(self.output_dir, exist_ok=True)
            write_json(os.path.join(self.output_dir, "part_seg_results.json"), {"num_records": count, **results})
            write_part_per_class_csv(
                os.path.join(self.output_dir, "part_seg_per_class.csv"),
                self.class_names,
                self.base_class_indices,
                results,
            )
            np.savez(os.path.join(self.output_dir, "part_seg_confusion.npz"), **conf)
        return results
