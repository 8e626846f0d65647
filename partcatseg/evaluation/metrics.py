"""Confusion-matrix accumulation and the metric definitions used by the papers.

Pure numpy, no I/O, no torch. Conventions (shared with detectron2's ``SemSegEvaluator``):

* a confusion matrix for ``N`` classes has shape ``(N+1, N+1)``; **rows = prediction, columns = ground
  truth**; index ``N`` is the "ignore" bin (ignored GT pixels, and in Pred-All also background predictions);
* every reported number is a percentage (x100).

Three definitions of the seen/unseen ("base"/"unbase") averages exist in the literature and are all
computed, under explicit names, by :func:`compute_metrics` from the same matrices:

``"partcatseg"`` (PartCATSeg's ``partcatseg_evaluation.py``, the paper's numbers)
    mean of per-class IoU over the subset's classes whose IoU is **> 0** (zeros and NaN dropped).
    A subset key is *absent* when no class survives the filter.
``"ovparts"`` (OV-PARTS' ``generalized_sem_seg_evaluation.py``)
    ``sum(IoU of classes with GT) / #classes with GT or predictions`` — zero-IoU classes and classes
    that are only predicted count in the denominator. Keys are always present (NaN if the
    denominator is 0), as in OV-PARTS.
``"partclipseg"`` (PartCLIPSeg's ``partclipseg_evaluation.py``)
    mean IoU over the subset's classes **with GT**, zeros included; Oracle-Obj counts on the N x N
    block with a class IoU only where the class has GT (predicted-only classes leave the mean),
    Pred-All first zeroes the ignore column and counts the background bin. ``pAcc-<set>`` and
    ``mRecall-<set>`` are reported per subset. Boundary IoU is not computed.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "confusion_matrix",
    "compute_metrics",
    "partcatseg_metrics",
    "ovparts_metrics",
    "partclipseg_metrics",
    "semseg_metrics",
    "harmonic_mean",
    "DEFINITIONS",
]

#: The named subset-metric definitions, in the order they appear in result dicts.
DEFINITIONS = ("partcatseg", "ovparts", "partclipseg")


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (pred, gt) pairs into an ``(N+1, N+1)`` int64 matrix (rows = prediction, cols = GT).

    Both label maps must already use ``num_classes`` for ignored pixels; values outside
    ``[0, num_classes]`` would silently land in wrong bins, so they are rejected.
    """
    pred = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
    gt = np.asarray(gt).reshape(-1).astype(np.int64, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"confusion_matrix: pred has {pred.size} pixels but gt has {gt.size}")
    n1 = num_classes + 1
    for name, arr in (("prediction", pred), ("ground truth", gt)):
        if arr.size and (arr.min() < 0 or arr.max() > num_classes):
            raise ValueError(
                f"confusion_matrix: {name} labels must lie in [0, {num_classes}] "
                f"({num_classes} = ignore bin), got range [{arr.min()}, {arr.max()}]"
            )
    return np.bincount(n1 * pred + gt, minlength=n1 * n1).reshape(n1, n1)


def harmonic_mean(a: Optional[float], b: Optional[float]) -> float:
    """``2ab/(a+b)``; NaN when either input is missing/NaN or ``a+b == 0``."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or a + b == 0:
        return float("nan")
    return 2.0 * a * b / (a + b)


def _check_conf(conf: np.ndarray, num_names: int) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square 2-D, got shape {conf.shape}")
    if conf.shape[0] != num_names + 1:
        raise ValueError(
            f"confusion matrix of shape {conf.shape} does not match {num_names} class names "
            f"(expected ({num_names + 1}, {num_names + 1}))"
        )
    return conf


def _counts(conf: np.ndarray, include_last_class: bool):
    """tp / pos_gt / pos_pred over the first N classes, or over all N+1 bins."""
    sub = conf if include_last_class else conf[:-1, :-1]
    tp = np.diagonal(sub).astype(np.float64)
    pos_gt = sub.sum(axis=0).astype(np.float64)
    pos_pred = sub.sum(axis=1).astype(np.float64)
    return tp, pos_gt, pos_pred


def _subsets(evaluation_set: Optional[Mapping[str, Sequence[int]]], n: int):
    """Yield ``(key_suffix, bool mask)`` for each set and its complement ("un" + name)."""
    if not evaluation_set:
        return
    for set_name, inds in evaluation_set.items():
        inds = np.asarray(list(inds), dtype=np.int64)
        if inds.size and (inds.min() < 0 or inds.max() >= n):
            raise ValueError(
                f"evaluation_set[{set_name!r}] has indices outside [0, {n - 1}]: "
                f"min {inds.min()}, max {inds.max()}"
            )
        mask = np.zeros(n, dtype=bool)
        mask[inds] = True
        yield set_name, mask
        yield "un" + set_name, ~mask


def partcatseg_metrics(
    conf: np.ndarray,
    class_names: Sequence[str],
    include_last_class: bool = False,
    evaluation_set: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, float]:
    """PartCATSeg's ``calculate_metrics`` + its IoU>0-filtered subset means.

    ``include_last_class=True`` (Pred-All) uses the full matrix, so a GT part pixel predicted as
    background/ignore (row N) is a false negative, and bin N gets its own IoU that enters ``mIoU``,
    ``mACC``, ``mRecall``, ``fwIoU`` and ``pACC`` of this dict (as in the official code).
    """
    n = len(class_names)
    conf = _check_conf(conf, n)
    tp, pos_gt, pos_pred = _counts(conf, include_last_class)
    k = tp.size
    iou = np.full(k, np.nan)
    acc = np.full(k, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN -> NaN, on purpose
        class_weights = pos_gt / pos_gt.sum()
        gt_valid = pos_gt > 0
        acc[gt_valid] = tp[gt_valid] / pos_gt[gt_valid]
        recall = acc.copy()  # identical by definition in the official code
        union = pos_gt + pos_pred - tp
        iou_valid = (pos_gt + pos_pred) > 0
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        res: Dict[str, float] = {
            "mIoU": 100 * float(np.nanmean(iou)),
            "fwIoU": 100 * float(np.nansum(iou * class_weights)),
            "mACC": 100 * float(np.nanmean(acc)),
            "pACC": 100 * float(np.nansum(tp) / np.nansum(pos_gt)),
            "mRecall": 100 * float(np.nanmean(recall)),
        }
    iou100, acc100, rec100 = 100 * iou[:n], 100 * acc[:n], 100 * recall[:n]
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = float(iou100[i])
        res[f"ACC-{name}"] = float(acc100[i])
        res[f"Recall-{name}"] = float(rec100[i])

    positive = np.nan_to_num(iou100, nan=0.0) > 0  # the paper's filter: IoU > 0 only
    for suffix, mask in _subsets(evaluation_set, n):
        keep = mask & positive
        if not keep.any():
            continue  # key absent, as in the official code
        res[f"mIoU-{suffix}"] = float(np.mean(iou100[keep]))
        res[f"mRecall-{suffix}"] = float(np.mean(rec100[keep]))
        res[f"pACC-{suffix}"] = float(np.sum(acc100[keep]) / keep.sum())
    if "mIoU-base" in res and "mIoU-unbase" in res:
        res["h-IoU"] = harmonic_mean(res["mIoU-base"], res["mIoU-unbase"])
    if "mRecall-base" in res and "mRecall-unbase" in res:
        res["h-Recall"] = harmonic_mean(res["mRecall-base"], res["mRecall-unbase"])
    return res


def ovparts_metrics(
    conf: np.ndarray,
    class_names: Sequence[str],
    include_last_class: bool = False,
    evaluation_set: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, float]:
    """OV-PARTS' mIoU / fwIoU / subset mIoU / h-IoU on the same matrix.

    Per class (over the N named classes only; bin N is never a class here): IoU is defined where the
    class has GT; a set's mean is ``sum(IoU over classes with GT) / #classes with GT or predictions``.
    ``include_last_class`` chooses the counts exactly as in :func:`partcatseg_metrics` (for Pred-All a
    GT pixel predicted as background is a miss), so the two definitions differ only in averaging.
    OV-PARTS' own evaluator always slices ``[:-1, :-1]``; that equals ``include_last_class=False``.
    """
    n = len(class_names)
    conf = _check_conf(conf, n)
    tp, pos_gt, pos_pred = (v[:n] for v in _counts(conf, include_last_class))
    gt_valid = pos_gt > 0
    counted = (pos_gt + pos_pred) > 0
    iou = np.full(n, np.nan)
    iou[gt_valid] = tp[gt_valid] / (pos_gt + pos_pred - tp)[gt_valid]

    def ratio(num: float, den: float) -> float:
        return float(num / den) if den > 0 else float("nan")

    weights = pos_gt / pos_gt.sum() if pos_gt.sum() > 0 else np.zeros(n)
    res: Dict[str, float] = {
        "mIoU": 100 * ratio(iou[gt_valid].sum(), counted.sum()),
        "fwIoU": 100 * float(np.sum(iou[gt_valid] * weights[gt_valid])) if gt_valid.any() else float("nan"),
    }
    for suffix, mask in _subsets(evaluation_set, n):
        res[f"mIoU-{suffix}"] = 100 * ratio(iou[mask & gt_valid].sum(), counted[mask].sum())
    if "mIoU-base" in res and "mIoU-unbase" in res:
        res["h-IoU"] = harmonic_mean(res["mIoU-base"], res["mIoU-unbase"])
    return res


def partclipseg_metrics(
    conf: np.ndarray,
    class_names: Sequence[str],
    oracle: bool,
    evaluation_set: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, float]:
    """Official PartCLIPSeg ``evaluate()`` on an (N+1) x (N+1) matrix; values in percent.

    Args:
        conf: the Oracle-Obj matrix (``oracle=True``) or the Pred-All matrix (``oracle=False``).
        class_names: the N class names.
        evaluation_set: ``{"base": [indices]}`` (dataset metadata); each set s also yields "un" + s.
    """
    n = len(class_names)
    conf = np.array(conf, dtype=np.int64, copy=True)
    if conf.shape != (n + 1, n + 1):
        raise ValueError(f"confusion matrix of shape {conf.shape} does not match {n} class names")
    if oracle:
        tp = np.diagonal(conf)[:-1].astype(np.float64)
        pos_gt = conf[:-1, :-1].sum(axis=0).astype(np.float64)
        pos_pred = conf[:-1, :-1].sum(axis=1).astype(np.float64)
    else:
        conf[:, -1] = 0  # "without GT background"
        tp = np.diagonal(conf).astype(np.float64)
        pos_gt = conf.sum(axis=0).astype(np.float64)
        pos_pred = conf.sum(axis=1).astype(np.float64)
    k = tp.size
    acc, iou, recall = (np.full(k, np.nan) for _ in range(3))
    res: Dict[str, float] = {}
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN slices, 0/0, as officially
        recall_valid = pos_gt > 0
        class_weights = pos_gt / np.sum(pos_gt)
        acc[recall_valid] = tp[recall_valid] / pos_gt[recall_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = (pos_gt + pos_pred) > 0
        if oracle:
            iou[recall_valid] = tp[recall_valid] / union[recall_valid]
        else:
            iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        recall[recall_valid] = tp[recall_valid] / pos_gt[recall_valid]

        res["mIoU"] = 100 * float(np.nanmean(iou))
        res["fwIoU"] = 100 * float(np.nansum(iou * class_weights))
        for i, name in enumerate(class_names):
            res[f"IoU-{name}"] = 100 * float(iou[i])
        res["mACC"] = 100 * float(np.nanmean(acc))
        res["pACC"] = 100 * float(np.nansum(tp) / np.nansum(pos_gt))
        res["mRecall"] = 100 * float(np.nanmean(recall))
        for i, name in enumerate(class_names):
            res[f"ACC-{name}"] = 100 * float(acc[i])
            res[f"Recall-{name}"] = 100 * float(recall[i])

        for set_name, inds in (evaluation_set or {}).items():
            mask = np.zeros(k, dtype=bool)
            mask[np.asarray(list(inds), dtype=int)] = True
            for suffix, m in ((set_name, mask), ("un" + set_name, ~mask)):
                iou_ok = (recall_valid if oracle else iou_valid) & m
                if np.any(iou_ok):
                    if oracle:
                        miou = np.nanmean(iou[m])
                    else:
                        miou = np.sum(iou[m][recall_valid[m]]) / np.sum(recall_valid[m])
                else:
                    miou = np.nan
                acc_ok = recall_valid & m
                mrecall = np.nanmean(recall[acc_ok]) if np.any(acc_ok) else np.nan
                pacc = np.nansum(tp[m]) / np.nansum(pos_gt[m]) if np.nansum(pos_gt[m]) > 0 else np.nan
                res[f"mIoU-{suffix}"] = 100 * float(miou)
                res[f"pAcc-{suffix}"] = 100 * float(pacc)
                res[f"mRecall-{suffix}"] = 100 * float(mrecall)
    if "mIoU-base" in res and "mIoU-unbase" in res:
        res["h-IoU"] = harmonic_mean(res["mIoU-base"], res["mIoU-unbase"])
        res["h-Recall"] = harmonic_mean(res["mRecall-base"], res["mRecall-unbase"])
    return res


def compute_metrics(
    conf: np.ndarray,
    class_names: Sequence[str],
    include_last_class: bool = False,
    evaluation_set: Optional[Mapping[str, Sequence[int]]] = None,
) -> Dict[str, Dict[str, float]]:
    """Every definition on one matrix: ``{"partcatseg": {...}, "ovparts": {...}, "partclipseg": {...}}``.

    ``evaluation_set`` maps a set name to class indices (PartCATSeg metadata: ``{"base": [...]}``);
    each set ``s`` yields ``mIoU-s`` and ``mIoU-un s`` (its complement), and ``h-IoU`` is derived
    from ``mIoU-base``/``mIoU-unbase``.
    """
    return {
        "partcatseg": partcatseg_metrics(conf, class_names, include_last_class, evaluation_set),
        "ovparts": ovparts_metrics(conf, class_names, include_last_class, evaluation_set),
        # the Pred-All matrix is the one counted with its last (background) class
        "partclipseg": partclipseg_metrics(conf, class_names, not include_last_class, evaluation_set),
    }


def semseg_metrics(conf: np.ndarray, class_names: Sequence[str]) -> Dict[str, float]:
    """detectron2 (master) ``SemSegEvaluator`` metrics: means over classes **with GT** only.

    (detectron2 v0.6 divided by classes with GT *or* predictions; CAT-Seg's numbers use master.)
    """
    n = len(class_names)
    conf = _check_conf(conf, n)
    tp, pos_gt, pos_pred = _counts(conf, include_last_class=False)
    acc = np.full(n, np.nan)
    iou = np.full(n, np.nan)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    total = pos_gt.sum()
    nan = float("nan")
    res: Dict[str, float] = {
        "mIoU": 100 * float(iou[iou_valid].mean()) if iou_valid.any() else nan,
        "fwIoU": 100 * float(np.sum(iou[iou_valid] * pos_gt[iou_valid] / total)) if total > 0 else nan,
        "mACC": 100 * float(acc[acc_valid].mean()) if acc_valid.any() else nan,
        "pACC": 100 * float(tp.sum() / total) if total > 0 else nan,
    }
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    return res
