"""Interrupted training loses nothing: SIGKILL at an arbitrary point or SIGTERM, then --resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

TOY_CFG = str(REPO / "configs/toy/partcatseg_toy.yaml")
OPTS = ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2",
        "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from partcatseg.data.datasets import make_toy_dataset

    root = tmp_path_factory.mktemp("datasets")
    make_toy_dataset(str(root / "ToyPart"), seed=1, num_train=30, num_val=4)
    return root


def _cmd(out, *extra):
    return [sys.executable, str(REPO / "train_net.py"), "--config-file", TOY_CFG, *extra, *OPTS,
            "OUTPUT_DIR", str(out), "MODEL.TEXT_CACHE_DIR", str(out.parent / "text")]


def _env(root):
    return dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONUNBUFFERED="1")


def _run(root, out, *extra):
    proc = subprocess.run(_cmd(out, *extra), env=_env(root), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _start_and_wait_for(root, out, checkpoint: str, timeout: float = 600):
    proc = subprocess.Popen(_cmd(out), env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while not (out / checkpoint).exists():
        assert proc.poll() is None, f"training ended before {checkpoint}: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "timed out waiting for a checkpoint"
        time.sleep(0.05)
    return proc


def _final(out):
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight(toy_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    _run(toy_root, out)
    return _final(out)


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_point_then_resume_equals_uninterrupted(toy_root, tmp_path, straight):
    out = tmp_path / "killed"
    proc = _start_and_wait_for(toy_root, out, "model_0000003.pth")
    proc.send_signal(signal.SIGKILL)  # no handler can run: whatever is on disk must be usable
    proc.wait(timeout=60)
    last = (out / "last_checkpoint").read_text().strip()
    assert (out / last).is_file()
    torch.load(out / last, weights_only=True)  # complete, loadable
    assert not (out / "model_final.pth").exists()
    _run(toy_root, out, "--resume")
    final = _final(out)
    assert all(torch.equal(final[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(toy_root, tmp_path, straight):
    out = tmp_path / "terminated"
    proc = _start_and_wait_for(toy_root, out, "model_0000001.pth")
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text[-3000:]
    assert "SIGTERM" in text and "--resume" in text
    last = (out / "last_checkpoint").read_text().strip()
    it = int(last.split("_")[1].split(".")[0])
    assert it >= 1 and not (out / "model_final.pth").exists()
    _run(toy_root, out, "--resume")
    final = _final(out)
    assert all(torch.equal(final[k], straight[k]) for k in straight)
