"""tools/evaluate_predictions.py: saved label maps score exactly like the in-process evaluation."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import evaluate_predictions  # noqa: E402

DATASET = "toy_obj_part_sem_seg_val_obj_condition"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from partcatseg.data.datasets import dataset_root, make_toy_dataset

    root = tmp_path_factory.mktemp("datasets")
    make_toy_dataset(str(root / "ToyPart"), seed=3, num_train=4, num_val=10)
    with dataset_root(str(root)):
        yield root


@pytest.fixture(scope="module")
def model_outputs(toy, tmp_path_factory):
    """A tiny toy model's outputs on every test record, the in-process results and a saved folder."""
    from partcatseg.config import setup_cfg
    from partcatseg.data import DatasetCatalog, build_mapper
    from partcatseg.data.catalog import MetadataCatalog
    from partcatseg.evaluation import PartSegEvaluator
    from partcatseg.evaluation.predictions import write_prediction_pngs
    from partcatseg.modeling import build_model

    tmp = tmp_path_factory.mktemp("preds")
    cfg = setup_cfg(str(REPO / "configs/toy/partcatseg_toy.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.TEXT_CACHE_DIR", str(tmp / "text")])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    mapper = build_mapper(cfg, is_train=False, dataset_name=DATASET)
    meta = MetadataCatalog.get(DATASET)
    evaluator = PartSegEvaluator.from_metadata(meta, distributed=False)
    folder = tmp / "method"
    for record in DatasetCatalog.get(DATASET):
        sample = mapper(record)
        if sample is None:
            continue
        out = model([sample])[0]
        evaluator.process([sample], [out])
        write_prediction_pngs(record, out, str(folder), len(meta.stuff_classes))
    return evaluator.evaluate(), folder


def test_saved_predictions_score_identically(model_outputs, tmp_path, capsys):
    direct, folder = model_outputs
    assert evaluate_predictions.main(["--dataset", DATASET, "--predictions", str(folder),
                                      "--output", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "part_seg_results.json").read_text())
    for setting in ("oracle_obj", "pred_all"):
        for key in ("mIoU", "mIoU-base", "mIoU-unbase", "h-IoU"):
            a = direct[setting]["partcatseg"].get(key)
            b = saved[setting]["partcatseg"].get(key)
            assert (a is None and b is None) or abs(a - b) < 1e-9, (setting, key, a, b)
    printed = capsys.readouterr().out
    assert "Oracle-Obj" in printed and "Pred-All" in printed and "h-IoU" in printed
    assert (tmp_path / "part_seg_per_class.csv").is_file()


def test_missing_prediction_is_an_error_or_skipped(model_outputs, tmp_path, capsys):
    import shutil

    _, folder = model_outputs
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    victim = sorted((broken / "pred_all").glob("*.png"))[0]
    victim.unlink()
    assert evaluate_predictions.main(["--dataset", DATASET, "--predictions", str(broken)]) == 2
    assert str(victim) in capsys.readouterr().err
    assert evaluate_predictions.main(["--dataset", DATASET, "--predictions", str(broken),
                                      "--skip-bad-records"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_wrong_size_and_missing_folder_are_clear(model_outputs, tmp_path, capsys):
    import shutil

    from PIL import Image

    _, folder = model_outputs
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    victim = sorted((bad / "pred_all").glob("*.png"))[0]
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(victim)
    assert evaluate_predictions.main(["--dataset", DATASET, "--predictions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "7x5" in err
    assert evaluate_predictions.main(["--dataset", DATASET, "--predictions", str(tmp_path / "nothing")]) == 2
    assert "pred_all" in capsys.readouterr().err
