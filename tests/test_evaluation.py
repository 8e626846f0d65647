"""Evaluators: hand-computed confusion cases, both subset definitions, files, and a real 2-rank all-reduce.

Every expected number below is worked out by hand in the comments (not by calling the code under test).
"""
from __future__ import annotations

import csv
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from partcatseg.evaluation import (
    PartSegEvaluator,
    SemSegEvaluator,
    VOCbSemSegEvaluator,
    compute_metrics,
    confusion_matrix,
    flatten_results,
    harmonic_mean,
    resize_gt_nearest,
    semseg_metrics,
    semseg_table,
    summary_table,
)

IGN = 255


def one_hot_scores(labels, num_channels, low=0.0):
    """(C,H,W) float scores whose argmax is ``labels``."""
    labels = torch.as_tensor(labels)
    scores = torch.full((num_channels, *labels.shape), low)
    scores.scatter_(0, labels[None], 1.0)
    return scores


# ----------------------------------------------------------------------------------------------
# metrics.py on a hand-built matrix
# ----------------------------------------------------------------------------------------------
# 4 classes a, b (base) and c, d (novel); bin 4 = ignore. rows = prediction, cols = GT.
NAMES4 = ["a", "b", "c", "d"]
CONF4 = np.zeros((5, 5), dtype=np.int64)
CONF4[0, 0] = 4   # gt a -> a
CONF4[1, 0] = 2   # gt a -> b
CONF4[0, 1] = 3   # gt b -> a   (b never right: IoU(b) = 0)
CONF4[2, 2] = 2   # gt c -> c
CONF4[3, 2] = 2   # gt c -> d   (d has predictions but no GT)
CONF4[4, 0] = 1   # gt a -> ignore/background bin
CONF4[0, 4] = 5   # ignored gt, predicted a
CONF4[4, 4] = 10


def test_confusion_matrix_rows_are_predictions():
    conf = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), num_classes=2)
    expected = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)
    with pytest.raises(ValueError, match=r"ground truth labels must lie in \[0, 2\]"):
        confusion_matrix(np.array([0]), np.array([3]), num_classes=2)


def test_partcatseg_definition_oracle_block():
    res = compute_metrics(CONF4, NAMES4, include_last_class=False, evaluation_set={"base": [0, 1]})["partcatseg"]
    # N x N block: pos_gt a=6 b=3 c=4 d=0; pos_pred a=7 b=2 c=2 d=2; tp a=4 b=0 c=2 d=0
    # IoU a=4/9, b=0/5=0, c=2/4, d=0/2=0 ; ACC a=4/6, b=0, c=1/2, d=NaN
    assert res["IoU-a"] == pytest.approx(100 * 4 / 9)
    assert res["IoU-b"] == 0.0
    assert res["IoU-c"] == pytest.approx(50.0)
    assert res["IoU-d"] == 0.0
    assert math.isnan(res["ACC-d"])
    assert res["mIoU"] == pytest.approx(100 * (4 / 9 + 0.5) / 4)
    assert res["mACC"] == pytest.approx(100 * (4 / 6 + 0 + 0.5) / 3)
    assert res["pACC"] == pytest.approx(100 * 6 / 13)
    assert res["fwIoU"] == pytest.approx(100 * (6 / 13 * 4 / 9 + 4 / 13 * 0.5))
    # IoU > 0 filter: base keeps only a, unbase keeps only c (b and d are dropped)
    assert res["mIoU-base"] == pytest.approx(100 * 4 / 9)
    assert res["mIoU-unbase"] == pytest.approx(50.0)
    assert res["mRecall-base"] == pytest.approx(100 * 4 / 6)
    assert res["pACC-base"] == pytest.approx(100 * 4 / 6)
    assert res["mRecall-unbase"] == pytest.approx(50.0)
    b, u = 100 * 4 / 9, 50.0
    assert res["h-IoU"] == pytest.approx(2 * b * u / (b + u))  # 47.0588...
    assert res["h-IoU"] == pytest.approx(47.05882352941)
    assert res["h-Recall"] == pytest.approx(2 * (400 / 6) * 50 / (400 / 6 + 50))


def test_ovparts_definition_differs_where_iou_is_zero():
    both = compute_metrics(CONF4, NAMES4, include_last_class=False, evaluation_set={"base": [0, 1]})
    ov = both["ovparts"]
    # base: (IoU a + IoU b) / 2 classes with GT-or-pred = (4/9 + 0) / 2
    assert ov["mIoU-base"] == pytest.approx(100 * (4 / 9) / 2)
    # unbase: IoU c / 2 (d has predictions only -> counts in the denominator)
    assert ov["mIoU-unbase"] == pytest.approx(25.0)
    assert ov["h-IoU"] == pytest.approx(2 * (400 / 18) * 25 / (400 / 18 + 25))  # 23.529...
    assert ov["mIoU"] == pytest.approx(100 * (4 / 9 + 0.5) / 4)
    assert ov["fwIoU"] == pytest.approx(100 * (6 / 13 * 4 / 9 + 4 / 13 * 0.5))
    # the two definitions must disagree on this matrix
    assert both["partcatseg"]["mIoU-base"] > ov["mIoU-base"]
    assert both["partcatseg"]["h-IoU"] == pytest.approx(47.05882352941)
    assert ov["h-IoU"] == pytest.approx(23.52941176470)
    assert "mRecall-base" not in ov and "IoU-a" not in ov


def test_include_last_class_counts_bin_n():
    both = compute_metrics(CONF4, NAMES4, include_last_class=True, evaluation_set={"base": [0, 1]})
    res = both["partcatseg"]
    # full 5x5: pos_gt a=7 ign=15; pos_pred a=12 ign=11; tp a=4 ign=10
    assert res["IoU-a"] == pytest.approx(100 * 4 / 15)
    assert res["Recall-a"] == pytest.approx(100 * 4 / 7)  # the bin-4 prediction is a miss
    # mIoU includes the bin's own IoU 10/16 over 5 entries
    assert res["mIoU"] == pytest.approx(100 * (4 / 15 + 0 + 0.5 + 0 + 10 / 16) / 5)
    assert res["pACC"] == pytest.approx(100 * (4 + 2 + 10) / (7 + 3 + 4 + 0 + 15))
    assert res["mIoU-base"] == pytest.approx(100 * 4 / 15)
    assert res["h-IoU"] == pytest.approx(2 * (400 / 15) * 50 / (400 / 15 + 50))  # 34.78...
    ov = both["ovparts"]
    assert ov["mIoU-base"] == pytest.approx(100 * (4 / 15) / 2)
    assert ov["mIoU-unbase"] == pytest.approx(25.0)
    assert ov["mIoU"] == pytest.approx(100 * (4 / 15 + 0 + 0.5) / 4)  # named classes only


def test_keys_absent_when_no_class_survives_the_filter():
    conf = np.zeros((3, 3), dtype=np.int64)
    conf[1, 0] = 5  # gt x always predicted y  -> IoU x = 0, IoU y = 0
    conf[1, 1] = 0
    conf[2, 2] = 7
    both = compute_metrics(conf, ["x", "y"], evaluation_set={"base": [0]})
    pc = both["partcatseg"]
    for key in ("mIoU-base", "mIoU-unbase", "mRecall-base", "pACC-unbase", "h-IoU", "h-Recall"):
        assert key not in pc
    assert pc["IoU-x"] == 0.0 and pc["IoU-y"] == 0.0
    ov = both["ovparts"]  # OV-PARTS keeps the keys: base (x has GT) = 0/1, unbase (y predicted) = 0/1
    assert ov["mIoU-base"] == 0.0 and ov["mIoU-unbase"] == 0.0
    assert math.isnan(ov["h-IoU"])
    # PartImageNet-OOD style: empty base set -> only the unbase keys exist
    conf2 = np.zeros((3, 3), dtype=np.int64)
    conf2[0, 0] = 3
    conf2[1, 1] = 1
    pc2 = compute_metrics(conf2, ["x", "y"], evaluation_set={"base": []})["partcatseg"]
    assert "mIoU-base" not in pc2 and "h-IoU" not in pc2
    assert pc2["mIoU-unbase"] == pytest.approx(100.0)
    ov2 = compute_metrics(conf2, ["x", "y"], evaluation_set={"base": []})["ovparts"]
    assert math.isnan(ov2["mIoU-base"])  # 0 / 0 classes
    # no evaluation set at all -> no subset keys in either definition
    plain = compute_metrics(conf2, ["x", "y"])
    assert not any("base" in k or k.startswith("h-") for d in plain.values() for k in d)


def test_harmonic_mean():
    assert harmonic_mean(40.0, 60.0) == pytest.approx(48.0)
    assert harmonic_mean(0.0, 50.0) == 0.0
    assert math.isnan(harmonic_mean(0.0, 0.0))
    assert math.isnan(harmonic_mean(float("nan"), 3.0))
    assert math.isnan(harmonic_mean(None, 3.0))


def test_semseg_metrics_detectron2_master():
    # classes a b c; pairs (pred, gt): (0,0) (1,0) (1,1) (2,1) (2,ign) (0,0)
    pred = np.array([0, 1, 1, 2, 2, 0])
    gt = np.array([0, 0, 1, 1, 3, 0])
    res = semseg_metrics(confusion_matrix(pred, gt, 3), ["a", "b", "c"])
    # pos_gt a=3 b=2 c=0; pos_pred a=2 b=2 c=1; tp a=2 b=1
    assert res["IoU-a"] == pytest.approx(100 * 2 / 3)
    assert res["IoU-b"] == pytest.approx(100 * 1 / 3)
    assert math.isnan(res["IoU-c"])  # predicted but no GT: excluded (master), not counted as 0 (v0.6)
    assert res["mIoU"] == pytest.approx(50.0)
    assert res["fwIoU"] == pytest.approx(100 * (3 / 5 * 2 / 3 + 2 / 5 * 1 / 3))
    assert res["mACC"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert res["pACC"] == pytest.approx(60.0)


# ----------------------------------------------------------------------------------------------
# PartSegEvaluator
# ----------------------------------------------------------------------------------------------
PART_NAMES = ["cat's head", "cat's body", "dog's head"]
PART_BASE = [0, 2]


def _cat_record():
    """One hand-made (image, object=cat) record, 2x3, no resize needed."""
    gt = torch.tensor([[0, 0, 1], [1, IGN, IGN]])
    sem_seg = torch.stack([
        torch.tensor([[0.9, 0.2, 0.1], [0.6, 0.9, 0.1]]),  # cat's head
        torch.tensor([[0.1, 0.0, 0.8], [0.3, 0.1, 0.7]]),  # cat's body
        torch.full((2, 3), -1.0),                            # dog's head: Oracle-masked
    ])
    # Pred-All argmax = [[head, dog, bg], [body, bg, head]]
    sem_seg_all = one_hot_scores(torch.tensor([[0, 2, 3], [1, 3, 0]]), 4)
    return {"obj_part_sem_seg": gt, "file_name": "cat.jpg"}, {"sem_seg": sem_seg, "sem_seg_all": sem_seg_all}


def test_part_evaluator_oracle_and_pred_all(tmp_path):
    ev = PartSegEvaluator(PART_NAMES, PART_BASE, ignore_label=IGN, output_dir=str(tmp_path), distributed=False)
    inp, out = _cat_record()
    ev.process([inp], [out])
    conf, count = ev.confusion_matrices()
    assert count == 1
    # Oracle pred = [[0,0,1],[0,N,N]] (ignored GT pixels forced to bin 3)
    exp_oracle = np.zeros((4, 4), dtype=np.int64)
    exp_oracle[0, 0] = 2
    exp_oracle[1, 1] = 1
    exp_oracle[0, 1] = 1
    exp_oracle[3, 3] = 2
    np.testing.assert_array_equal(conf["oracle_obj"], exp_oracle)
    # Pred-All: (0,0) (2,0) (3,1)=bg on body, (1,1), and the two ignored pixels -> (3,3)
    exp_all = np.zeros((4, 4), dtype=np.int64)
    exp_all[0, 0] = 1
    exp_all[2, 0] = 1
    exp_all[3, 1] = 1
    exp_all[1, 1] = 1
    exp_all[3, 3] = 2
    np.testing.assert_array_equal(conf["pred_all"], exp_all)

    res = ev.evaluate()
    assert list(res) == ["oracle_obj", "pred_all"]
    assert list(res["oracle_obj"]) == ["partcatseg", "ovparts", "partclipseg"]
    # PartCLIPSeg's evaluator: Pred-All zeroes the ignore column, then the background bin (no GT, one
    # prediction) has IoU 0 and counts in mIoU: (50 + 50 + 0 + 0) / 4; seen / unseen average the
    # classes with GT only (head; body)
    c = res["pred_all"]["partclipseg"]
    assert c["mIoU"] == pytest.approx(25.0) and c["IoU-dog's head"] == pytest.approx(0.0)
    assert (c["mIoU-base"], c["mIoU-unbase"], c["h-IoU"]) == pytest.approx((50.0, 50.0, 50.0))
    assert res["oracle_obj"]["partclipseg"]["mIoU"] == pytest.approx((200 / 3 + 50) / 2)  # dog: no GT -> NaN
    o = res["oracle_obj"]["partcatseg"]
    # IoU head = 2/(2+3-2), body = 1/(2+1-1), dog NaN (no GT, no pred)
    assert o["IoU-cat's head"] == pytest.approx(200 / 3)
    assert o["IoU-cat's body"] == pytest.approx(50.0)
    assert math.isnan(o["IoU-dog's head"])
    assert o["mIoU-base"] == pytest.approx(200 / 3) and o["mIoU-unbase"] == pytest.approx(50.0)
    assert o["h-IoU"] == pytest.approx(2 * (200 / 3) * 50 / (200 / 3 + 50))  # 57.142857
    p = res["pred_all"]["partcatseg"]
    # body: GT 2 px, one predicted bg -> Recall 50 (bg is a miss), IoU 1/(2+1-1)
    assert p["Recall-cat's body"] == pytest.approx(50.0)
    assert p["IoU-cat's body"] == pytest.approx(50.0)
    assert p["IoU-cat's head"] == pytest.approx(50.0)
    assert p["IoU-dog's head"] == 0.0  # predicted once, never in GT
    assert p["mIoU"] == pytest.approx(100 * (0.5 + 0.5 + 0 + 2 / 3) / 4)
    assert p["mIoU-base"] == pytest.approx(50.0) and p["h-IoU"] == pytest.approx(50.0)
    po = res["pred_all"]["ovparts"]
    assert po["mIoU-base"] == pytest.approx(25.0)  # (0.5 + dog's 0) / 2
    assert po["h-IoU"] == pytest.approx(2 * 25 * 50 / 75)

    # files
    data = json.loads((tmp_path / "part_seg_results.json").read_text())
    assert data["num_records"] == 1
    assert data["oracle_obj"]["partcatseg"]["h-IoU"] == pytest.approx(57.142857142857)
    assert data["oracle_obj"]["partcatseg"]["IoU-dog's head"] is None  # NaN -> null (strict JSON)
    assert data["pred_all"]["ovparts"]["mIoU-base"] == pytest.approx(25.0)
    with open(tmp_path / "part_seg_per_class.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "split", "oracle_obj_IoU", "oracle_obj_ACC", "oracle_obj_Recall",
                       "pred_all_IoU", "pred_all_ACC", "pred_all_Recall"]
    assert rows[1] == ["cat's head", "base", "66.6667", "100.0000", "100.0000", "50.0000", "50.0000", "50.0000"]
    assert rows[2] == ["cat's body", "novel", "50.0000", "50.0000", "50.0000", "50.0000", "50.0000", "50.0000"]
    assert rows[3] == ["dog's head", "base", "", "", "", "0.0000", "", ""]
    npz = np.load(tmp_path / "part_seg_confusion.npz")
    np.testing.assert_array_equal(npz["pred_all"], exp_all)


def test_oracle_minus_one_never_wins_argmax():
    # allowed classes score exactly 0 (sigmoid underflow); the disallowed class sits at -1
    ev = PartSegEvaluator(PART_NAMES, PART_BASE, ignore_label=IGN, distributed=False)
    sem_seg = torch.zeros(3, 2, 2)
    sem_seg[1, 1, 1] = 0.5
    sem_seg[2] = -1.0
    sem_seg_all = one_hot_scores(torch.full((2, 2), 2), 4)  # unmasked head says dog everywhere
    gt = torch.tensor([[0, 0], [1, 1]])
    ev.process([{"obj_part_sem_seg": gt}], [{"sem_seg": sem_seg, "sem_seg_all": sem_seg_all}])
    conf, _ = ev.confusion_matrices()
    assert conf["oracle_obj"][2].sum() == 0  # dog row empty
    assert conf["oracle_obj"][0, 0] == 2 and conf["oracle_obj"][0, 1] == 1 and conf["oracle_obj"][1, 1] == 1
    assert conf["pred_all"][2, :3].sum() == 4  # Pred-All is not masked


def test_gt_legacy_nearest_resize():
    up = resize_gt_nearest(torch.tensor([[0, 1, 2], [3, 4, 5]]), (4, 6))
    np.testing.assert_array_equal(
        up.numpy(),
        [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]],
    )
    # legacy nearest uses floor(dst * in/out): 5 -> 3 picks 0, 1, 3 ("nearest-exact" would pick 0, 2, 4)
    np.testing.assert_array_equal(resize_gt_nearest(torch.tensor([[0, 1, 2, 3, 4]]), (1, 3)).numpy(), [[0, 1, 3]])
    # 3 -> 5 picks 0, 0, 1, 1, 2 (nearest-exact: 0, 0, 1, 2, 2)
    np.testing.assert_array_equal(resize_gt_nearest(np.array([[7, 8, 65535]]), (1, 5)).numpy(), [[7, 7, 8, 8, 65535]])


def test_part_evaluator_resizes_gt_to_prediction():
    # GT at mapper resolution 2x3, prediction at original 4x6
    ev = PartSegEvaluator(PART_NAMES, PART_BASE, ignore_label=IGN, distributed=False)
    gt = np.array([[0, 1, IGN], [1, 0, 0]])
    sem_seg = one_hot_scores(torch.zeros(4, 6, dtype=torch.long), 3)
    sem_seg_all = one_hot_scores(torch.full((4, 6), 3), 4)  # background everywhere
    ev.process([{"obj_part_sem_seg": gt}], [{"sem_seg": sem_seg, "sem_seg_all": sem_seg_all}])
    conf, _ = ev.confusion_matrices()
    # each GT pixel becomes a 2x2 block: label 0 -> 12 px, label 1 -> 8 px, ignore -> 4 px
    assert conf["oracle_obj"][0, 0] == 12 and conf["oracle_obj"][0, 1] == 8 and conf["oracle_obj"][3, 3] == 4
    assert conf["oracle_obj"].sum() == 24
    assert conf["pred_all"][3, 0] == 12 and conf["pred_all"][3, 1] == 8 and conf["pred_all"][3, 3] == 4
    res = ev.evaluate()
    assert res["pred_all"]["partcatseg"]["Recall-cat's head"] == 0.0  # all-background = all misses
    assert "mIoU-base" not in res["pred_all"]["partcatseg"]


def test_part_evaluator_instances_input_matches_label_map():
    gt = torch.tensor([[0, 0, 1], [1, IGN, IGN]])
    masks = torch.stack([gt == 0, gt == 1])
    inst = SimpleNamespace(gt_classes=torch.tensor([0, 1]), gt_masks=masks)
    _, out = _cat_record()
    a = PartSegEvaluator(PART_NAMES, PART_BASE, ignore_label=IGN, distributed=False)
    b = PartSegEvaluator(PART_NAMES, PART_BASE, ignore_label=IGN, distributed=False)
    a.process([{"obj_part_sem_seg": gt}], [out])
    b.process([{"obj_part_instances": inst}], [out])
    for key in ("oracle_obj", "pred_all"):
        np.testing.assert_array_equal(a.confusion_matrices()[0][key], b.confusion_matrices()[0][key])


def test_part_evaluator_errors():
    ev = PartSegEvaluator(PART_NAMES, PART_BASE, ignore_label=IGN, distributed=False)
    with pytest.raises(RuntimeError, match="no records were processed"):
        ev.evaluate()
    inp, out = _cat_record()
    with pytest.raises(KeyError, match="sem_seg_all"):
        ev.process([inp], [{"sem_seg": out["sem_seg"]}])
    with pytest.raises(ValueError, match="has 3 channels, expected 4"):
        ev.process([inp], [{"sem_seg": out["sem_seg"], "sem_seg_all": out["sem_seg"]}])
    with pytest.raises(ValueError, match=r"GT part labels \[7\] outside"):
        ev.process([{"obj_part_sem_seg": torch.tensor([[7, 0, 0], [0, 0, 0]])}], [out])
    with pytest.raises(KeyError, match="obj_part_sem_seg"):
        ev.process([{"file_name": "x.jpg"}], [out])
    with pytest.raises(ValueError, match="ignore_label=1 is a valid class index"):
        PartSegEvaluator(PART_NAMES, PART_BASE, ignore_label=1)
    with pytest.raises(ValueError, match="out of range"):
        PartSegEvaluator(PART_NAMES, [0, 3])
    with pytest.raises(ValueError, match="PartSegEvaluator: class_names is empty"):
        PartSegEvaluator([], None)
    with pytest.raises(ValueError, match="SemSegEvaluator: class_names contains duplicates"):
        SemSegEvaluator(["cat", "dog", "cat"])


def test_part_from_metadata_and_tables():
    meta = SimpleNamespace(stuff_classes=PART_NAMES, evaluation_set={"base": PART_BASE}, ignore_label=IGN)
    ev = PartSegEvaluator.from_metadata(meta, output_dir=None, distributed=False)
    assert ev.class_names == PART_NAMES and ev.base_class_indices == PART_BASE and ev.ignore_label == IGN
    inp, out = _cat_record()
    ev.process([inp], [out])
    res = ev.evaluate()
    text = summary_table(res)
    lines = text.splitlines()
    assert lines[0].startswith("partcatseg definition")
    assert any(line.startswith("ovparts definition") for line in lines)
    assert any(line.startswith("partclipseg definition") for line in lines)
    oracle_rows = [line for line in lines if "Oracle-Obj" in line]
    assert len(oracle_rows) == 3
    assert "66.67" in oracle_rows[0] and "57.14" in oracle_rows[0]
    assert [line for line in lines if "Pred-All" in line] == [
        "| Pred-All   |  50.00 |    50.00 |   50.00 |",  # partcatseg
        "| Pred-All   |  25.00 |    50.00 |   33.33 |",  # ovparts
        "| Pred-All   |  50.00 |    50.00 |   50.00 |",  # partclipseg
    ]
    flat = flatten_results(res)
    assert flat["oracle_obj/partcatseg/h-IoU"] == pytest.approx(57.142857142857)
    assert flat["pred_all/ovparts/mIoU-base"] == pytest.approx(25.0)
    # no base split: dashes instead of numbers
    nosplit = PartSegEvaluator(PART_NAMES, None, ignore_label=IGN, distributed=False)
    nosplit.process([inp], [out])
    assert "| Oracle-Obj |      - |        - |       - |" in summary_table(nosplit.evaluate())


# ----------------------------------------------------------------------------------------------
# SemSegEvaluator / VOCb
# ----------------------------------------------------------------------------------------------
SEM_GT = np.array([[0, 0, 1], [1, IGN, 0]])
SEM_PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])


@pytest.mark.parametrize("source", ["array", "png", "tif"])
def test_semseg_evaluator_sources(tmp_path, source):
    out_dir = tmp_path / "out"
    ev = SemSegEvaluator(["a", "b", "c"], ignore_label=IGN, output_dir=str(out_dir), distributed=False)
    if source == "array":
        record = {"sem_seg_gt": SEM_GT, "file_name": "img.jpg"}
    elif source == "png":
        path = tmp_path / "gt.png"
        Image.fromarray(SEM_GT.astype(np.uint8)).save(path)
        record = {"sem_seg_file_name": str(path)}
    else:
        path = tmp_path / "gt.tif"
        Image.fromarray(SEM_GT.astype(np.uint16)).save(path)
        record = {"sem_seg_file_name": str(path)}
    ev.process([record], [{"sem_seg": one_hot_scores(SEM_PRED, 3)}])
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(50.0)  # (2/3 + 1/3) / 2, class c has no GT
    assert res["pACC"] == pytest.approx(60.0)
    assert math.isnan(res["IoU-c"])
    data = json.loads((out_dir / "sem_seg_results.json").read_text())
    assert data["num_records"] == 1 and data["sem_seg"]["mIoU"] == pytest.approx(50.0)
    assert semseg_table({"sem_seg": res}).splitlines()[2] == "| sem_seg |  50.00 |   53.33 |  58.33 |  60.00 |"
    with open(out_dir / "sem_seg_per_class.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["class", "IoU", "ACC"], ["a", "66.6667", "66.6667"], ["b", "33.3333", "50.0000"], ["c", "", ""]]


def test_semseg_tif_with_65535_ignore(tmp_path):
    gt = np.array([[3, 65535], [0, 3]], dtype=np.uint16)
    path = tmp_path / "a847.tif"
    Image.fromarray(gt).save(path)
    ev = SemSegEvaluator(["a", "b", "c", "d"], ignore_label=65535, distributed=False)
    ev.process([{"sem_seg_file_name": str(path)}], [{"sem_seg": one_hot_scores(torch.tensor([[3, 0], [0, 1]]), 4)}])
    res = ev.evaluate()["sem_seg"]
    # d: tp 1, gt 2, pred 1 -> 1/2 ; a: tp 1, gt 1, pred 2 (one on ignore is excluded) -> 1/1
    assert res["IoU-d"] == pytest.approx(50.0) and res["IoU-a"] == pytest.approx(100.0)
    assert res["mIoU"] == pytest.approx(75.0)


def test_vocb_maps_extra_predictions_to_background():
    names = [f"c{i}" for i in range(20)] + ["background"]
    ev = VOCbSemSegEvaluator(names, ignore_label=IGN, distributed=False)
    gt = np.array([[20, 20, 5, 0, IGN]])
    pred = torch.tensor([[22, 20, 5, 20, 30]])  # 59-name vocabulary: >= 20 means background
    ev.process([{"sem_seg_gt": gt}], [{"sem_seg": one_hot_scores(pred, 59)}])
    res = ev.evaluate()["sem_seg"]
    # bg: tp 2, gt 2, pred 3 (the ignored pixel is excluded) -> 2/3; c5 -> 1; c0 -> 0
    assert res["IoU-background"] == pytest.approx(200 / 3)
    assert res["IoU-c5"] == pytest.approx(100.0)
    assert res["IoU-c0"] == 0.0
    assert res["mIoU"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    plain = SemSegEvaluator(names, ignore_label=IGN, distributed=False)
    with pytest.raises(ValueError, match="predicted class 30 >= num_classes 21"):
        plain.process([{"sem_seg_gt": gt}], [{"sem_seg": one_hot_scores(pred, 59)}])
    with pytest.raises(ValueError, match="expects 21 classes"):
        VOCbSemSegEvaluator(names[:20])


def test_semseg_errors():
    ev = SemSegEvaluator(["a", "b", "c"], ignore_label=IGN, distributed=False)
    with pytest.raises(RuntimeError, match="no records were processed"):
        ev.evaluate()
    with pytest.raises(ValueError, match=r"GT shape \(2, 3\) != prediction shape \(4, 6\)"):
        ev.process([{"sem_seg_gt": SEM_GT}], [{"sem_seg": torch.zeros(3, 4, 6)}])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        ev.process([{"sem_seg_file_name": "/nonexistent/nope.png"}], [{"sem_seg": torch.zeros(3, 2, 3)}])
    meta = SimpleNamespace(stuff_classes=["a", "b"], ignore_label=2)
    assert SemSegEvaluator.from_metadata(meta, distributed=False).num_classes == 2


# ----------------------------------------------------------------------------------------------
# real 2-process gloo all-reduce
# ----------------------------------------------------------------------------------------------
def _random_records(n, seed=0):
    rng = np.random.default_rng(seed)
    part, sem = [], []
    for _ in range(n):
        h, w = rng.integers(3, 7, size=2)
        gt = rng.integers(0, 3, size=(h, w))
        gt[rng.random((h, w)) < 0.3] = IGN
        out = {"sem_seg": torch.from_numpy(rng.random((3, 2 * h, 2 * w))).float(),
               "sem_seg_all": torch.from_numpy(rng.random((4, 2 * h, 2 * w))).float()}
        part.append(({"obj_part_sem_seg": gt}, out))
        sgt = rng.integers(0, 3, size=(h, w))
        sgt[rng.random((h, w)) < 0.2] = IGN
        sem.append(({"sem_seg_gt": sgt}, {"sem_seg": torch.from_numpy(rng.random((3, h, w))).float()}))
    return part, sem


def _dist_worker(rank, world_size, init_file, out_root):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        part, sem = _random_records(7)
        pev = PartSegEvaluator(PART_NAMES, PART_BASE, IGN, os.path.join(out_root, f"rank{rank}"), distributed=True)
        sev = SemSegEvaluator(["a", "b", "c"], IGN, os.path.join(out_root, f"sem{rank}"), distributed=True)
        for inp, out in part[rank::world_size]:
            pev.process([inp], [out])
        for inp, out in sem[rank::world_size]:
            sev.process([inp], [out])
        conf, count = pev.confusion_matrices()
        pres, sres = pev.evaluate(), sev.evaluate()
        # single-process reference over all records
        ref_p = PartSegEvaluator(PART_NAMES, PART_BASE, IGN, distributed=False)
        ref_s = SemSegEvaluator(["a", "b", "c"], IGN, distributed=False)
        for inp, out in part:
            ref_p.process([inp], [out])
        for inp, out in sem:
            ref_s.process([inp], [out])
        ref_conf, ref_count = ref_p.confusion_matrices()
        assert count == ref_count == 7
        for key in ("oracle_obj", "pred_all"):
            np.testing.assert_array_equal(conf[key], ref_conf[key])
        assert json.dumps(pres, sort_keys=True) == json.dumps(ref_p.evaluate(), sort_keys=True)
        assert json.dumps(sres, sort_keys=True) == json.dumps(ref_s.evaluate(), sort_keys=True)
        assert 0 < pres["oracle_obj"]["partcatseg"]["mIoU"] < 100
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_all_reduce(tmp_path):
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "dist_init"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0" / "part_seg_results.json").is_file()
    assert (tmp_path / "sem0" / "sem_seg_results.json").is_file()
    assert not (tmp_path / "rank1").exists() and not (tmp_path / "sem1").exists()  # only rank 0 writes
    data = json.loads((tmp_path / "rank0" / "part_seg_results.json").read_text())
    assert data["num_records"] == 7
