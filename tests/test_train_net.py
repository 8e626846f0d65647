"""train_net.py end to end on the toy dataset: training, resume, DDP, eval-only, NaN stop."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
@pytest.mark.parametrize("extra", [
    (),
    # data-loader worker processes, and 2 micro-batches of 2 images per optimizer step
    ("DATALOADER.NUM_WORKERS", "2", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MICRO_BATCH_SIZE", "2"),
], ids=["plain", "workers_and_accumulation"])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(toy_root, tmp_path, extra):
    opts = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.IMS_PER_BATCH", "2",
            "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", *extra]
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
    if extra:
        assert "4 image(s)/rank/iter in 2 micro-batches of 2" in proc.stdout + proc.stderr
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
    for needle in ("Oracle-Obj", "Pred-All", "seen", "unseen", "h-IoU", "partcatseg definition", "ovparts definition",
                   "partclipseg definition"):
        assert needle in text, needle
    res_dir = out / "inference" / "toy_obj_part_sem_seg_val_obj_condition"
    results = read_results(out)
    assert set(results) >= {"oracle_obj", "pred_all"}
    assert set(results["oracle_obj"]) == {"partcatseg", "ovparts", "partclipseg"}
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
    opts = ["SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR",
            "1e30", "SOLVER.CLIP_GRADIENTS.ENABLED", "False", "DATASETS.TEST", "()"]
    # default: the first step makes weights of ~1e30; they are refused before anything is saved
    out = tmp_path / "bounded"
    proc = run_train_net(toy_root, out, *opts, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("FloatingPointError: weights became larger than SOLVER.MAX_WEIGHT_ABS=1e+08 after the optimizer step of "
            "iteration 0") in text and "first bad parameter '" in text
    assert not list(out.glob("*.pth")) and not (out / "last_checkpoint").exists()
    # finiteness only (SOLVER.MAX_WEIGHT_ABS 0): the NaN loss of the next iteration stops it, before its step
    out = tmp_path / "nan"
    proc = run_train_net(toy_root, out, *opts, "SOLVER.MAX_WEIGHT_ABS", "0", check=False)
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


def _train_net_cmd(out_dir, *args):
    return [sys.executable, str(REPO / "train_net.py"), "--config-file", TOY_CFG, *args, "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(out_dir), "MODEL.TEXT_CACHE_DIR", str(out_dir / "text")]


def _children(pid: int) -> list:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat").read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                kids.append(int(name))
    return kids


def _running(pid: int) -> bool:
    """Exists and is not a zombie (a killed child of a dead parent may wait for its reaper)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] != "Z"


def _sigstop_rank1_and_wait(toy_root, out, *args, timeout=600):
    """Start a 2-process job, SIGSTOP rank 1 after iteration 3, return (proc, stderr, seconds, rank-1 pids)."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_root), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_train_net_cmd(out, "--num-gpus", "2", *args), env=env, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped = []
    try:
        deadline = time.time() + timeout
        beat = out / "heartbeats" / "rank1.json"
        while True:
            assert proc.poll() is None, f"the job ended early:\n{proc.stderr.read()[-4000:]}"
            assert time.time() < deadline, "the job never reached iteration 3"
            try:
                hb = json.loads(beat.read_text())
                if hb["last_completed"] >= 3:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        pids = [hb["pid"], *_children(hb["pid"])]  # rank 1 and its data-loader worker
        os.kill(hb["pid"], signal.SIGSTOP)
        stopped.append(hb["pid"])
        t0 = time.monotonic()
        stderr = proc.communicate(timeout=300)[1]
        return proc, stderr, time.monotonic() - t0, pids
    finally:
        if proc.poll() is None:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            proc.kill()


@pytest.mark.slow
def test_stalled_ddp_rank_is_named_and_the_job_exits(toy_root, tmp_path):
    out = tmp_path / "stall"
    proc, stderr, seconds, pids = _sigstop_rank1_and_wait(
        toy_root, out, "SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2",
        "DATASETS.TEST", "()", "SOLVER.WATCHDOG_SECONDS", "10", "DATALOADER.NUM_WORKERS", "1")
    assert proc.returncode == 3, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("rank 1 made no progress for ") and "; stopping all ranks; last checkpoint: " in last, last
    assert seconds < 60, seconds
    ckpt = last.split("last checkpoint: ")[1]
    assert torch.load(ckpt, weights_only=True)["iteration"] >= 1  # written before the stall: valid
    assert len(pids) == 2 and not any(_running(pid) for pid in pids), pids  # nothing of rank 1 left running
    rank0 = json.loads((out / "heartbeats" / "rank0.json").read_text())["pid"]
    assert not _running(rank0)


@pytest.mark.slow
def test_dist_timeout_ends_a_job_with_a_stopped_rank(toy_root, tmp_path):
    out = tmp_path / "timeout"
    # every collective waits at most 20 s (long enough for the ranks' start-up skew and checkpoint writes here);
    # the watchdog would only act after a day, its heartbeats tell the test rank 1's pid
    proc, stderr, seconds, pids = _sigstop_rank1_and_wait(
        toy_root, out, "--dist-timeout", "20", "SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()", "SOLVER.WATCHDOG_SECONDS", "86400")
    assert proc.returncode == 1, stderr[-3000:]
    # one line through the common error path, as in a single-process job: which rank waited, how long, why
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: a collective operation on rank 0 waited longer than the collective "
                           "timeout (20 s, --dist-timeout / DIST_TIMEOUT) at iteration "), stderr[-3000:]
    assert "Last checkpoint: " in last and "model_" in last.split("Last checkpoint: ")[1], last
    assert "Traceback" not in stderr, stderr[-3000:]
    assert 15 < seconds < 60, seconds
    assert not any(_running(pid) for pid in pids)
    assert (out / "config.yaml").read_text().count("DIST_TIMEOUT: 20.0") == 1  # the flag reached the config


@pytest.mark.slow
def test_bad_training_image_stops_by_name_or_is_skipped_and_resume_stays_exact(tmp_path):
    from partcatseg.data.datasets import make_toy_dataset

    root = tmp_path / "datasets"
    make_toy_dataset(str(root / "ToyPart"), seed=3, num_train=6, num_val=2)
    victim = sorted((root / "ToyPart" / "images" / "train").glob("*.jpg"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # a half-copied file
    opts = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()"]

    strict = run_train_net(root, tmp_path / "strict", *opts, check=False)
    assert strict.returncode != 0
    assert victim.name in strict.stderr and "--skip-bad-records" in strict.stderr, strict.stderr[-3000:]

    straight = tmp_path / "straight"
    proc = run_train_net(root, straight, "--skip-bad-records", *opts)
    listed = json.loads((straight / "skipped_train_records.json").read_text())
    # 6 iterations x 2 images over 6 records: two epochs, the broken image is met in both
    assert len(listed) >= 2 and all(e["file_name"].endswith(victim.name) for e in listed)
    assert all("cannot decode image" in e["reason"] for e in listed)
    assert f"Skipped training record {listed[0]['file_name']}" in proc.stdout
    assert {e["iteration"] for e in listed} & {0, 1, 2} and {e["iteration"] for e in listed} & {3, 4, 5}

    # the same job "died" after the iteration-2 checkpoint, then resumed
    resumed = tmp_path / "resumed"
    run_train_net(root, resumed, "--skip-bad-records", *opts)
    for name in ("model_0000005.pth", "model_final.pth"):
        (resumed / name).unlink(missing_ok=True)
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    run_train_net(root, resumed, "--resume", "--skip-bad-records", *opts)
    assert json.loads((resumed / "skipped_train_records.json").read_text()) == listed
    a = torch.load(straight / "model_final.pth", weights_only=True)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # more bad records than allowed: a clear stop
    capped = run_train_net(root, tmp_path / "capped", "--skip-bad-records", *opts, "DATALOADER.MAX_BAD_RECORDS", "0",
                           check=False)
    assert capped.returncode == 1  # a runtime failure through the common error path, no traceback
    assert "train_net.py: error: 1 distinct training records could not be read, more than " \
           "DATALOADER.MAX_BAD_RECORDS=0" in capped.stderr and "Traceback" not in capped.stderr
