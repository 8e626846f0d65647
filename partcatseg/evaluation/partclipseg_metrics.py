"""The official PartCLIPSeg metric definitions (``baselines/evaluation/partclipseg_evaluation.py``).

Not wired into :class:`~partcatseg.evaluation.part_seg.PartSegEvaluator`; it computes the official
PartCLIPSeg numbers from the confusion matrices that evaluator accumulates (and saves as
``part_seg_confusion.npz``). Those matrices are exactly the official ones: rows = prediction,
columns = ground truth, bin N = ignore; Oracle-Obj predictions and Pred-All predictions are set to N
where the ground truth is ignored, and a Pred-All background prediction is N.

How the official evaluator differs from :func:`~partcatseg.evaluation.metrics.compute_metrics`:

* one setting per run: ``ORACLE: True`` scores the Oracle-Obj matrix, ``False`` the Pred-All one;
* Oracle-Obj counts on the N x N block, and a class IoU exists only where the class has ground
  truth (a class that is only predicted is NaN, not 0 — it leaves the overall ``mIoU``);
* Pred-All first zeroes the ignore column (``conf[:, -1] = 0``), then counts on the full
  (N+1) x (N+1) matrix: bin N (background predictions on part pixels) has IoU 0 (NaN if the
  background was never predicted there) and enters ``mIoU``/``mACC``/``mRecall``/``fwIoU``/``pACC``;
* the seen/unseen means (``mIoU-base`` / ``mIoU-unbase``) in both settings average the IoU over the
  subset's classes **with ground truth**, zeros included (PartCATSeg: classes with IoU > 0; OV-PARTS:
  sum over classes with ground truth divided by the number of classes with ground truth *or*
  predictions); ``h-IoU`` is their harmonic mean;
* ``mRecall-<set>`` is the mean recall over the subset's classes with ground truth, ``pAcc-<set>``
  the pixel accuracy of the subset (summed true positives / summed ground truth);
* boundary IoU (``BoundaryIoU-*``, ``Boundary-mIoU-*``, ``h-bIoU``) needs boundary matrices and is
  not computed here.
"""
from __future__ import annotations

import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .metrics import harmonic_mean

__all__ = ["partclipseg_metrics"]


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
