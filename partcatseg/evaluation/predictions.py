"""Score label-map PNGs written by *any* method with the same Oracle-Obj / Pred-All protocol.

Layout of a predictions folder (one file per test record and setting)::

    DIR/pred_all/<name>.png     Pred-All labels: class index, or 255 (65535 in 16-bit PNGs) = background
    DIR/oracle_obj/<name>.png   Oracle-Obj labels (optional): class index restricted to the record's object

``<name>`` is :func:`prediction_name` of the record: the image's file stem, plus ``_obj<k>`` for
object-conditioned records (``category_id`` k), plus ``_inst<id>`` when the record is one object
instance (ADE20K-Part-234).  Class indices refer to the dataset's ``stuff_classes``.  Maps must
have the original image size.  Ground truth goes through the official two-step resizing (the test
mapper's resize, then nearest back to the prediction size), exactly as for our own model.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import numpy as np
import torch
from PIL import Image

__all__ = ["SETTING_DIRS", "prediction_name", "write_prediction_pngs", "read_label_png", "evaluate_prediction_dir"]

logger = logging.getLogger(__name__)

SETTING_DIRS = ("pred_all", "oracle_obj")


def prediction_name(record: Mapping[str, Any]) -> str:
    """File name (without extension) of a test record's prediction."""
    name = os.path.splitext(os.path.basename(str(record["file_name"])))[0]
    if record.get("category_id") is not None:
        name += f"_obj{int(record['category_id'])}"
        anns = record.get("obj_annotations") or []
        if len(anns) == 1 and anns[0].get("id") is not None:
            name += f"_inst{anns[0]['id']}"
    return name


def _encode(labels: np.ndarray, num_classes: int, none_value: int) -> Image.Image:
    labels = np.where((labels < 0) | (labels >= num_classes), none_value, labels)
    if none_value == 255:
        return Image.fromarray(labels.astype(np.uint8))
    return Image.fromarray(labels.astype(np.uint16))


def write_prediction_pngs(record: Mapping[str, Any], output: Mapping[str, Any], out_dir: str, num_classes: int) -> None:
    """Save a model output (``sem_seg``/``sem_seg_all`` scores) in the folder layout above."""
    none_value = 255 if num_classes < 255 else 65535
    name = prediction_name(record) + ".png"
    pred_all = output["sem_seg_all"].argmax(dim=0).cpu().numpy()  # index N = background -> none
    oracle = output["sem_seg"].argmax(dim=0).cpu().numpy()
    for sub, labels in (("pred_all", pred_all), ("oracle_obj", oracle)):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        _encode(labels, num_classes, none_value).save(os.path.join(out_dir, sub, name))


def read_label_png(path: str) -> np.ndarray:
    """A label PNG as int64 (8- or 16-bit); clear errors for missing or unreadable files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prediction file missing: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except OSError as exc:
        raise ValueError(f"prediction file {path} is unreadable or truncated: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"prediction file {path} has shape {arr.shape}; expected a single-channel label map")
    return arr.astype(np.int64)


def _labels(path: str, num_classes: int, background: int, shape: tuple[int, int]) -> torch.Tensor:
    arr = read_label_png(path)
    if arr.shape != shape:
        raise ValueError(f"prediction {path} is {arr.shape[1]}x{arr.shape[0]} (WxH); the image is {shape[1]}x{shape[0]}")
    arr = np.where((arr < 0) | (arr >= num_classes), background, arr)
    return torch.from_numpy(arr)


def evaluate_prediction_dir(
    dataset_name: str,
    predictions: str,
    mapper,
    output_dir: Optional[str] = None,
    skip_bad_records: bool = False,
) -> dict:
    """Evaluate ``predictions`` (layout above) on ``dataset_name`` with the PartSegEvaluator.

    Without an ``oracle_obj`` folder the Oracle-Obj numbers are computed from the Pred-All maps with
    background pixels counted as misses (documented; the table says so).
    """
    from ..data import DatasetCatalog, MetadataCatalog
    from .part_seg import PartSegEvaluator

    meta = MetadataCatalog.get(dataset_name)
    evaluator = PartSegEvaluator.from_metadata(meta, output_dir=output_dir, distributed=False)
    n = len(meta.stuff_classes)
    if not os.path.isdir(os.path.join(predictions, "pred_all")):
        raise FileNotFoundError(
            f"{predictions} has no 'pred_all' folder; expected {predictions}/pred_all/<name>.png "
            "(see partcatseg/evaluation/predictions.py for the naming)"
        )
    has_oracle = os.path.isdir(os.path.join(predictions, "oracle_obj"))
    problems, skipped = [], []
    records = DatasetCatalog.get(dataset_name)
    if not records:
        raise ValueError(f"dataset {dataset_name!r} has no records: nothing to evaluate")
    from tqdm import tqdm

    for record in tqdm(records, desc=f"evaluating {os.path.basename(predictions.rstrip('/'))}", unit="rec"):
        try:
            sample = mapper(record)
            if sample is None:
                skipped.append((record["file_name"], "no part label in the object region"))
                continue
            shape = (int(sample["height"]), int(sample["width"]))
            name = prediction_name(record) + ".png"
            pred_all = _labels(os.path.join(predictions, "pred_all", name), n, n, shape)
            if has_oracle:
                oracle = _labels(os.path.join(predictions, "oracle_obj", name), n, n, shape)
            else:
                oracle = pred_all
            evaluator.process_labels(sample, oracle, pred_all)
        except (OSError, ValueError) as exc:
            if not skip_bad_records:
                raise
            problems.append((record["file_name"], str(exc)))
    for file_name, why in problems:
        logger.warning("skipped bad record %s: %s", file_name, why)
    if problems or skipped:
        logger.warning("%d record(s) with problems and %d without part labels were skipped", len(problems), len(skipped))
    results = evaluator.evaluate()
    results["num_skipped_records"] = len(problems) + len(skipped)
    results["oracle_obj_source"] = "oracle_obj" if has_oracle else "pred_all"
    return results
