"""train_net.py end to end on the toy dataset: training, resume, DDP, eval-only, NaN stop."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

TOY_CFG = str(REPO / "configs/toy/partcatseg_toy.yaml")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    from partcatseg.data.datasets import make_toy_dataset

    make_toy_dataset(str(root / "ToyPart"), seed=0, num_train=120, num_val=24)
    return root


def run_train_net(toy_root, out_dir, *args, check=True, timeout=900):
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_root), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", TOY_CFG, *args,
           "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out_dir), "MODEL.TEXT_CACHE_DIR", str(out_dir / "text")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def read_results(out_dir) -> dict:
    path = out_dir / "inference" / "toy_obj_part_sem_seg_val_obj_condition" / "part_seg_results.json"
    return json.loads(path.read_text())


def seen(results: dict, setting: str = "oracle_obj") -> float:
    return results[setting]["partcatseg"]["mIoU-base"]


@pytest.mark.slow
def test_toy_training_learns_and_beats_the_untrained_model(toy_root, tmp_path):
    base = run_train_net(toy_root, tmp_path / "untrained", "--eval-only", "MODEL.WEIGHTS", "")
    assert "Oracle-Obj" in base.stdout + base.stderr
    untrained = read_results(tmp_path / "untrained")

    out = tmp_path / "train"
    run_train_net(toy_root, out, "SOLVER.MAX_ITER", "150", "SOLVER.CHECKPOINT_PERIOD", "75")
    trained = read_results(out)
    # clearly above what the randomly initialised network scores on the seen classes
    assert seen(trained) > seen(untrained) + 15, (seen(untrained), seen(trained))
    assert seen(trained, "pred_all") > seen(untrained, "pred_all")
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    losses = [x["total_loss"] for x in lines if "total_loss" in x]
    assert len(losses) >= 5 and losses[-1] < 0.7 * losses[0]
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    table = (out / "inference" / "results_table.txt").read_text()
    assert "Oracle-Obj" in table and "Pred-All" in table and "h-IoU" in table


@pytest.mark.slow
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(toy_root, tmp_path):
    opts = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.IMS_PER_BATCH", "2",
            "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]
    straight = tmp_path / "straight"
    run_train_net(toy_root, straight, *opts)
    # the interrupted run: same job, but it "died" right after writing the iteration-3 checkpoint
    resumed = tmp_path / "resumed"
    run_train_net(toy_root, resumed, *opts)
    for name in ("model_0000005.pth", "model_final.pth"):
        (resumed / name).unlink(missing_ok=True)
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    proc = run_train_net(toy_root, resumed, "--resume", *opts)
    assert "from iteration 3" in proc.stdout + proc.stderr
    a = torch.load(straight / "model_final.pth", weights_only=True)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_gloo_ddp_on_cpu(toy_root, tmp_path):
    out = tmp_path / "ddp"
    proc = run_train_net(toy_root, out, "--num-gpus", "2", "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
                         "SOLVER.CHECKPOINT_PERIOD", "100")
    text = proc.stdout + proc.stderr
    assert "world size 2" in text.lower() or "world_size=2" in text.lower() or (out / "log.txt.rank1").exists()
    assert (out / "model_final.pth").is_file()
    assert seen(read_results(out)) >= 0  # evaluation ran on both ranks and was reduced


@pytest.mark.slow
def test_eval_only_prints_paper_tables_and_writes_files(toy_root, tmp_path):
    out = tmp_path / "eval"
    from partcatseg.config import setup_cfg
    from partcatseg.modeling import build_model
    from weights_rule import rule_state_dict

    cfg = setup_cfg(TOY_CFG, ["MODEL.DEVICE", "cpu", "MODEL.TEXT_CACHE_DIR", str(tmp_path / "t")])
    ckpt = tmp_path / "rule.pth"
    torch.save({"model": rule_state_dict(build_model(cfg))}, ckpt)
    proc = run_train_net(toy_root, out, "--eval-only", "MODEL.WEIGHTS", str(ckpt))
    text = proc.stdout + proc.stderr
    for needle in ("Oracle-Obj", "Pred-All", "seen", "unseen", "h-IoU", "partcatseg definition", "ovparts definition"):
        assert needle in text, needle
    res_dir = out / "inference" / "toy_obj_part_sem_seg_val_obj_condition"
    results = read_results(out)
    assert set(results) >= {"oracle_obj", "pred_all"}
    assert set(results["oracle_obj"]) == {"partcatseg", "ovparts"}
    header = (res_dir / "part_seg_per_class.csv").read_text().splitlines()[0]
    assert "class" in header
    assert json.loads((res_dir / "skipped_records.json").read_text())  # part-less objects are listed
    assert not (out / "model_final.pth").exists()
    # batched evaluation (TEST.IMS_PER_BATCH): the same records, the same metrics up to argmax ties.
    # Outputs differ by ~2e-7 (batched matmuls; test_batch_equals_single_images), but the rule-filled
    # weights leave classes tied to ~2e-5, so a few hundred of ~1e5 pixels flip: the summary metrics
    # (not the per-class ones, some with a handful of pixels) agree to 0.1 points.
    out3 = tmp_path / "eval_batch3"
    run_train_net(toy_root, out3, "--eval-only", "MODEL.WEIGHTS", str(ckpt), "TEST.IMS_PER_BATCH", "3")
    batched = read_results(out3)
    for protocol in ("oracle_obj", "pred_all"):
        for definition, metrics in results[protocol].items():
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "'" not in k}
            assert "mIoU" in numbers and "mIoU-base" in numbers, (protocol, definition, sorted(numbers))
            got = {k: batched[protocol][definition][k] for k in numbers}
            assert got == pytest.approx(numbers, abs=0.1), (protocol, definition)
    skipped = (out3 / "inference" / "toy_obj_part_sem_seg_val_obj_condition" / "skipped_records.json").read_text()
    assert json.loads(skipped) == json.loads((res_dir / "skipped_records.json").read_text())


@pytest.mark.slow
def test_nan_loss_stops_with_iteration_and_keeps_last_checkpoint(toy_root, tmp_path):
    out = tmp_path / "nan"
    proc = run_train_net(toy_root, out, "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "1",
                         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "1e30", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
                         "DATASETS.TEST", "()", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "FloatingPointError" in text and "iteration" in text
    last = (out / "last_checkpoint").read_text().strip()
    state = torch.load(out / last, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_truncated_image_fails_by_name_or_is_skipped_and_reported(tmp_path):
    from partcatseg.data.datasets import make_toy_dataset

    root = tmp_path / "datasets"
    make_toy_dataset(str(root / "ToyPart"), seed=2, num_train=2, num_val=6)
    victim = sorted((root / "ToyPart" / "images" / "val").glob("*.jpg"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # a half-copied file
    proc = run_train_net(root, tmp_path / "strict", "--eval-only", "MODEL.WEIGHTS", "", check=False)
    assert proc.returncode != 0 and victim.name in proc.stdout + proc.stderr
    lenient = run_train_net(root, tmp_path / "lenient", "--eval-only", "--skip-bad-records", "MODEL.WEIGHTS", "")
    listed = json.loads((tmp_path / "lenient" / "inference" / "toy_obj_part_sem_seg_val_obj_condition"
                         / "skipped_records.json").read_text())
    bad = [r for r in listed if r["reason"] == "bad"]
    assert bad and all(r["file_name"].endswith(victim.name) for r in bad)
    assert f"{len(listed)} record(s) were not evaluated" in lenient.stdout + lenient.stderr
    assert read_results(tmp_path / "lenient")["num_records"] > 0
