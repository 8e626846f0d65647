"""A meta-architecture defined in tests/ runs through every tool, by the model protocol alone.

tests/plugins/tiny_meta_arch.py registers ``TinyPixelMatcher``; nothing in the package or the tools
knows it. Listed in ``MODEL.PLUGINS``, it is trained and evaluated by train_net.py, predicts own images
with the demo CLI, has those predictions scored by tools/evaluate_predictions.py, and is measured by
tools/benchmark.py.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import REPO, TESTS, run_tool

from partcatseg.vocab import get_part_dataset

PLUGIN = str(TESTS / "plugins" / "tiny_meta_arch.py")
TOY_CFG = str(REPO / "configs/toy/partcatseg_toy.yaml")
ARCH = ["MODEL.META_ARCHITECTURE", "TinyPixelMatcher", "MODEL.PLUGINS", f"['{PLUGIN}']", "MODEL.DEVICE", "cpu"]


def test_plugin_registers_on_import_and_builds(tmp_path):
    from partcatseg.config import setup_cfg
    from partcatseg.modeling import META_ARCH_REGISTRY, SegmentationModel, build_model, meta_architecture_class

    cfg = setup_cfg(TOY_CFG, ARCH + ["OUTPUT_DIR", str(tmp_path)])
    cls = meta_architecture_class(cfg)  # imports the plugin file
    assert cls.__name__ == "TinyPixelMatcher" and "TinyPixelMatcher" in META_ARCH_REGISTRY
    model = build_model(cfg)
    assert isinstance(model, SegmentationModel) and model.task == "part"
    assert model.vocabulary.name == "toy_part" and len(model.train_vocabulary) < len(model.vocabulary)
    out = model.eval()([{"image": torch.zeros(3, 20, 30, dtype=torch.uint8), "height": 10, "width": 15,
                         "object_class": 0}])[0]
    assert out["sem_seg"].shape == (len(model.vocabulary), 10, 15)
    assert out["sem_seg_all"].shape == (len(model.vocabulary) + 1, 10, 15)


def test_unknown_plugin_and_architecture_are_config_errors(tmp_path):
    from partcatseg.config import ConfigError, setup_cfg
    from partcatseg.modeling import build_model

    with pytest.raises(ConfigError, match="MODEL.PLUGINS: file 'nope/missing.py' does not exist"):
        build_model(setup_cfg(TOY_CFG, ["MODEL.PLUGINS", "['nope/missing.py']"]))
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        build_model(setup_cfg(TOY_CFG, ["MODEL.PLUGINS", "['no_such_module_xyz']"]))
    with pytest.raises(ConfigError, match="MODEL.META_ARCHITECTURE='Nope' is not registered; known: .*PartCATSeg"):
        build_model(setup_cfg(TOY_CFG, ["MODEL.META_ARCHITECTURE", "Nope"]))


@pytest.mark.slow
def test_plugin_through_train_net_demo_evaluator_and_benchmark(small_toy_root, tmp_path):
    toy_root = small_toy_root
    out = tmp_path / "train"
    common = ARCH + ["MODEL.TEXT_CACHE_DIR", str(tmp_path / "text")]
    # 1. training (+ the evaluation at the end), then --eval-only of the trained weights
    run_tool([str(REPO / "train_net.py"), "--config-file", TOY_CFG, *common, "OUTPUT_DIR", str(out),
          "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "30", "TEST.EVAL_PERIOD", "0"], toy_root)
    assert (out / "model_final.pth").is_file()
    metrics = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert any("term_pixel_accuracy" in m for m in metrics)  # a non-loss entry of the loss dict is logged
    evaluated = tmp_path / "eval"
    proc = run_tool([str(REPO / "train_net.py"), "--config-file", TOY_CFG, "--eval-only", *common,
                     "OUTPUT_DIR", str(evaluated), "MODEL.WEIGHTS", str(out / "model_final.pth")], toy_root)
    table = (evaluated / "inference" / "results_table.txt").read_text()
    assert "Oracle-Obj" in table and "Pred-All" in table and "Oracle-Obj" in proc.stdout + proc.stderr
    ours = json.loads((evaluated / "inference" / "toy_obj_part_sem_seg_val_obj_condition" /
                       "part_seg_results.json").read_text())

    # 2. the demo on the toy validation images (the config's test vocabulary = the dataset's classes)
    images = sorted((toy_root / "ToyPart" / "images" / "val").iterdir())
    demo_out = tmp_path / "demo"
    run_tool(["-m", "partcatseg.cli.demo", "--config-file", TOY_CFG, "--input", *map(str, images),
          "--output", str(demo_out), "--quiet", *common, "MODEL.WEIGHTS", str(out / "model_final.pth")], toy_root)
    summary = json.loads((demo_out / f"{images[0].stem}.json").read_text())
    assert summary["vocabulary_classes"] == list(get_part_dataset("toy_part").class_names)
    assert (demo_out / f"{images[0].stem}_overlay.png").is_file()

    # 3. the demo's label PNGs scored by the prediction evaluator (Pred-All folder layout)
    preds = tmp_path / "preds" / "pred_all"
    preds.mkdir(parents=True)
    for im in images:
        shutil.copy(demo_out / f"{im.stem}_labels.png", preds / f"{im.stem}.png")
    proc = run_tool([str(REPO / "tools/evaluate_predictions.py"), "--dataset", "toy_obj_part_sem_seg_val",
                 "--predictions", str(tmp_path / "preds"), "--output", str(tmp_path / "scored")], toy_root)
    assert "Pred-All" in proc.stdout
    scored = json.loads((tmp_path / "scored" / "part_seg_results.json").read_text())
    assert 0.0 <= scored["pred_all"]["partcatseg"]["mIoU"] <= 100.0
    assert set(ours) >= {"oracle_obj", "pred_all"}

    # 4. the benchmark
    bench = tmp_path / "bench.json"
    run_tool([str(REPO / "tools/benchmark.py"), "--config-file", TOY_CFG, "--phases", "build", "text_cold",
          "text_cached", "inference", "stages", "train_step", "--repeats", "1", "--warmup", "0", "--image-size", "32", "40",
          "--json", str(bench), *common], toy_root)
    report = json.loads(bench.read_text())
    assert report["model"]["meta_architecture"] == "TinyPixelMatcher"
    assert set(report["phases"]) == {"build", "text_cold", "text_cached", "inference", "stages", "train_step"}
    # it declares no stages: the per-stage profile is the whole forward, as "other"
    stages = report["phases"]["stages"]
    assert list(stages["stages"]) == ["other"] and stages["stages"]["other"]["gflop"] == stages["gflop_per_image"]
