"""PartCLIPSeg works everywhere a PartCATSeg model works: train_net (training and --eval-only), the
demo on own images and an own vocabulary, and the benchmark — through the model protocol only."""
from __future__ import annotations

import json

import pytest
from conftest import REPO, run_tool

TOY = str(REPO / "configs/toy/partclipseg_toy.yaml")


@pytest.mark.slow
def test_partclipseg_toy_through_the_tools(small_toy_root, tmp_path):
    common = ["MODEL.DEVICE", "cpu"]
    out = tmp_path / "train"
    run_tool([REPO / "train_net.py", "--config-file", TOY, *common, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "20",
              "SOLVER.CHECKPOINT_PERIOD", "20", "SOLVER.IMS_PER_BATCH", "2"], small_toy_root)
    metrics = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    logged = set().union(*metrics)
    assert {"loss_sem_seg", "term_part_obj", "term_part", "term_obj", "term_sep", "term_enh"} <= logged
    results = json.loads((out / "inference" / "toy_obj_part_sem_seg_val_obj_condition" /
                          "part_seg_results.json").read_text())
    assert set(results["oracle_obj"]) == {"partcatseg", "ovparts", "partclipseg"}

    evaluated = tmp_path / "eval"
    run_tool([REPO / "train_net.py", "--config-file", TOY, "--eval-only", *common, "OUTPUT_DIR", evaluated,
              "MODEL.WEIGHTS", out / "model_final.pth"], small_toy_root)
    again = json.loads((evaluated / "inference" / "toy_obj_part_sem_seg_val_obj_condition" /
                        "part_seg_results.json").read_text())
    assert again["oracle_obj"]["partclipseg"]["mIoU"] == pytest.approx(results["oracle_obj"]["partclipseg"]["mIoU"])

    image = sorted((small_toy_root / "ToyPart" / "images" / "val").iterdir())[0]
    demo = tmp_path / "demo"
    run_tool(["-m", "partcatseg.cli.demo", "--config-file", TOY, "--input", image, "--output", demo, "--quiet",
              "--objects", "robot: head, arm; kettle: spout", *common, "MODEL.WEIGHTS", out / "model_final.pth"],
             small_toy_root)
    summary = json.loads((demo / f"{image.stem}.json").read_text())
    assert summary["vocabulary_classes"] == ["robot's head", "robot's arm", "kettle's spout"]

    bench = tmp_path / "bench.json"
    run_tool([REPO / "tools/benchmark.py", "--config-file", TOY, "--phases", "build", "inference", "train_step",
              "--repeats", "1", "--warmup", "0", "--image-size", "48", "64", "--batch-size", "1",
              "--json", bench, *common], small_toy_root)
    report = json.loads(bench.read_text())
    assert report["model"]["meta_architecture"] == "PartCLIPSeg" and report["model"]["classes"] == 16
