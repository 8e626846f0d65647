"""Evaluation: confusion matrices -> metrics -> tables/files.

* :class:`PartSegEvaluator` — OV-PARTS Oracle-Obj / Pred-All settings; results nested as
  ``results[setting][definition][key]`` with settings ``oracle_obj``/``pred_all`` and definitions
  ``partcatseg`` (the paper's IoU>0-filtered means) / ``ovparts`` (OV-PARTS' means).
* :class:`SemSegEvaluator`, :class:`VOCbSemSegEvaluator` — CAT-Seg's semantic benchmarks
  (detectron2-master mIoU).
"""
from .metrics import (
    DEFINITIONS,
    compute_metrics,
    confusion_matrix,
    harmonic_mean,
    ovparts_metrics,
    partcatseg_metrics,
    semseg_metrics,
)
from .part_seg import SETTINGS, PartSegEvaluator, resize_gt_nearest
from .sem_seg import SemSegEvaluator, VOCbSemSegEvaluator, load_sem_seg_gt
from .tables import flatten_results, semseg_table, summary_table, write_json

__all__ = [
    "DEFINITIONS",
    "SETTINGS",
    "PartSegEvaluator",
    "SemSegEvaluator",
    "VOCbSemSegEvaluator",
    "compute_metrics",
    "confusion_matrix",
    "flatten_results",
    "harmonic_mean",
    "load_sem_seg_gt",
    "ovparts_metrics",
    "partcatseg_metrics",
    "resize_gt_nearest",
    "semseg_metrics",
    "semseg_table",
    "summary_table",
    "write_json",
]
