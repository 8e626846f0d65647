"""Glue between config, data, model and evaluators for ``train_net.py`` (detectron2's DefaultTrainer role).

Each function maps config keys to the explicit arguments of a data/evaluation component; nothing
here knows how a model or an evaluator works inside.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch

from ..config import resolve_micro_batches
from ..data import DatasetCatalog, MetadataCatalog, build_mapper, build_test_loader, build_train_loader
from ..evaluation import PartSegEvaluator, SemSegEvaluator, VOCbSemSegEvaluator
from ..evaluation.tables import semseg_table, summary_table, write_json
from ..modeling import SegmentationModel
from ..vocab import dataset_vocabulary
from . import comm
from .inference import inference_on_dataset

__all__ = [
    "train_loader_from_config",
    "test_loader_from_config",
    "evaluator_from_config",
    "evaluate",
    "format_results",
]

logger = logging.getLogger(__name__)


def train_loader_from_config(cfg: Any, start_iter: int = 0):
    """Training loader over ``DATASETS.TRAIN`` with the configured mapper, seeded by ``SEED``; bad records
    stop training unless ``DATALOADER.SKIP_BAD_RECORDS`` (at most ``DATALOADER.MAX_BAD_RECORDS`` distinct ones)."""
    dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
    mapper = build_mapper(cfg, is_train=True, dataset_name=cfg.DATASETS.TRAIN[0])
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    _, accumulation = resolve_micro_batches(cfg, comm.get_world_size())
    return build_train_loader(
        dicts, mapper, total_batch_size=cfg.SOLVER.IMS_PER_BATCH, num_workers=cfg.DATALOADER.NUM_WORKERS,
        seed=seed, start_iter=start_iter, skip_bad_records=cfg.DATALOADER.SKIP_BAD_RECORDS,
        max_bad_records=cfg.DATALOADER.MAX_BAD_RECORDS, accumulation_steps=accumulation,
    )


def test_loader_from_config(cfg: Any, dataset_name: str):
    dicts = DatasetCatalog.get(dataset_name)
    if len(dicts) == 0:
        raise ValueError(f"dataset {dataset_name!r} has no records: evaluation on an empty split is an error")
    mapper = build_mapper(cfg, is_train=False, dataset_name=dataset_name)
    return build_test_loader(
        dicts, mapper, batch_size=cfg.TEST.IMS_PER_BATCH, num_workers=cfg.DATALOADER.NUM_WORKERS,
        skip_bad_records=cfg.TEST.SKIP_BAD_RECORDS,
    )


class _PanelWriter:
    """Evaluator companion for ``TEST.VISUALIZE``: GT | Pred-All | Oracle panels per record."""

    def __init__(self, class_names, ignore_label: int, output_dir: str) -> None:
        self.class_names, self.ignore_label, self.output_dir = list(class_names), ignore_label, output_dir

    def reset(self) -> None:
        pass

    def process(self, inputs, outputs) -> None:
        from ..visualize import save_record_panels

        for record, output in zip(inputs, outputs):
            save_record_panels(record, output, self.class_names, self.output_dir, self.ignore_label)

    def evaluate(self):
        return None


def evaluator_from_config(cfg: Any, dataset_name: str, output_dir: str, task: str):
    """Part evaluator for part models (``task`` "part"), semantic (or VOC-b) evaluator otherwise."""
    meta = MetadataCatalog.get(dataset_name)
    if task == "part":
        evaluators = [PartSegEvaluator.from_metadata(meta, output_dir=output_dir)]
        if cfg.TEST.VISUALIZE:
            evaluators.append(_PanelWriter(meta.stuff_classes, meta.ignore_label, os.path.join(output_dir, "visualize")))
        return evaluators
    if getattr(meta, "evaluator_type", "sem_seg") == "sem_seg_background":
        return [VOCbSemSegEvaluator.from_metadata(meta, output_dir=output_dir)]
    return [SemSegEvaluator.from_metadata(meta, output_dir=output_dir)]


def format_results(results: Dict[str, Any]) -> str:
    """Readable tables (paper layout for part datasets) for ``{dataset: results}``."""
    blocks = []
    for name, res in results.items():
        if "oracle_obj" in res or "pred_all" in res:
            blocks.append(f"{name}\n{summary_table(res)}")
        elif "sem_seg" in res:
            blocks.append(f"{name}\n{semseg_table(res['sem_seg'])}")
    return "\n\n".join(blocks)


def evaluate(cfg: Any, model: SegmentationModel, output_root: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate on every ``DATASETS.TEST`` split; write results under ``OUTPUT_DIR/inference/<name>``.

    The model segments each split's own vocabulary (:func:`partcatseg.vocab.dataset_vocabulary`), so
    several test sets can be evaluated in one run.
    """
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"evaluate() needs a SegmentationModel (unwrapped from DDP), got {type(model).__name__}")
    output_root = output_root or os.path.join(cfg.OUTPUT_DIR, "inference")
    results: Dict[str, Any] = {}
    for name in cfg.DATASETS.TEST:
        out_dir = os.path.join(output_root, name)
        loader = test_loader_from_config(cfg, name)
        vocabulary = dataset_vocabulary(name)
        if vocabulary != model.vocabulary:
            model.set_vocabulary(vocabulary)
        res = inference_on_dataset(model, loader, evaluator_from_config(cfg, name, out_dir, model.task))
        skipped = [s for part in comm.all_gather(list(getattr(loader, "skipped", []))) for s in part]
        if skipped:
            # never silent: counted in the results, listed in a file and in the log
            logger.warning("%s: %d record(s) were not evaluated (reason 'none' = no part label in the "
                           "object region, 'bad' = unreadable): %s", name, len(skipped),
                           "; ".join(f"{s.file_name} ({s.reason})" for s in skipped[:10]))
            res["num_skipped_records"] = len(skipped)
            if comm.is_main_process():
                write_json(os.path.join(out_dir, "skipped_records.json"),
                           [{"file_name": s.file_name, "reason": s.reason, "message": s.message} for s in skipped])
        results[name] = res
    if comm.is_main_process():
        table = format_results(results)
        logger.info("Evaluation results:\n%s", table)
        os.makedirs(output_root, exist_ok=True)
        with open(os.path.join(output_root, "results_table.txt"), "w") as f:
            f.write(table + "\n")
    return results
