"""The CUDA checks in one command: ``make test-gpu`` (``pytest -m gpu``).

On a machine with CUDA: parity with the official fixture on the GPU, the speed modes within their
documented bounds, one training step with each training option (through the benchmark, which also
reports the CUDA memory figures) and a one-process NCCL DDP step with gradient accumulation. Each
check that has a CPU counterpart runs on the CPU too (in ``make test``), so the checks themselves
are exercised everywhere; the CUDA variants skip, saying so, without a GPU.
"""
from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import torch
from conftest import DATA, REPO, TINY_OPTS
from test_speed_modes import BF16_TOL, FP16_TOL
from weights_rule import rule_state_dict

from partcatseg.config import setup_cfg
from partcatseg.modeling import build_model

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")])
DEVICES = ["cpu", CUDA]
VOC = str(REPO / "configs/zero_shot/partcatseg_voc.yaml")


@pytest.fixture
def no_tf32():
    """Exact fp32 on Ampere+ GPUs: cuDNN convolutions default to TF32, which parity does not allow."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _parity_model(fx, device, tmp_path, extra=()):
    cfg = setup_cfg(str(REPO / fx["config"]), list(fx["opts"]) + ["MODEL.DEVICE", device, "MODEL.TEXT_CACHE_DIR",
                                                                  str(tmp_path / "text"), *extra])
    model = build_model(cfg)
    sd = rule_state_dict(model)
    sd["sem_seg_head.predictor.non_object_embedding"] = fx["non_object_embedding"]
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _fixture_record(fx):
    return {"image": fx["image"], "height": fx["height"], "width": fx["width"], "object_class": fx["gt_object_class"]}


# ------------------------------------------------------------------------------------ parity, speed modes
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_parity_with_the_official_fixture_on_cuda(tmp_path, no_tf32):
    fx = torch.load(DATA / "partcatseg_voc_single_prompt.pt", weights_only=False)
    model = _parity_model(fx, "cuda", tmp_path)
    assert model.device.type == "cuda"
    with torch.no_grad():
        out = model([_fixture_record(fx)])[0]
    # the CPU parity test's tolerances (tests/test_partcatseg_model.py), unchanged
    torch.testing.assert_close(out["sem_seg"].cpu(), fx["sem_seg_oracle"].float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["sem_seg_all"].cpu(), fx["sem_seg_all"].float(), atol=1e-3, rtol=0)
    model.train()
    loss = model([{"image": fx["image"], "sem_seg": fx["obj_gt"], "obj_part_sem_seg": fx["part_gt"]}])
    assert abs(loss["loss_sem_seg"].item() - fx["train_loss"]) <= 1e-4 * fx["train_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("mode, tol", [("bf16", BF16_TOL), ("fp16", FP16_TOL)])
def test_speed_modes_stay_within_their_bounds_on_cuda(tmp_path, no_tf32, mode, tol):
    fx = torch.load(DATA / "partcatseg_voc_single_prompt.pt", weights_only=False)
    ref = _parity_model(fx, "cuda", tmp_path)
    amp = _parity_model(fx, "cuda", tmp_path, ["TEST.AMP", mode])
    with torch.no_grad():
        a, b = ref([_fixture_record(fx)])[0]["sem_seg_all"], amp([_fixture_record(fx)])[0]["sem_seg_all"]
    assert b.dtype == torch.float32 and 0 < float((a - b).abs().max()) <= tol


# ------------------------------------------------------------------------------------ training options
@pytest.mark.parametrize("device", DEVICES)
def test_one_training_step_with_each_option_and_its_memory(tmp_path, device):
    from partcatseg.benchmark import BenchmarkSpec, run_benchmark

    variants = ["default", "checkpointing", "bf16", "accumulate2"] + (["fp16"] if device == "cuda" else [])
    spec = BenchmarkSpec(config_file=VOC, opts=TINY_OPTS + ["INPUT.CROP.SIZE", "(64, 64)"], device=device,
                         batch_size=1, warmup=1, repeats=1, text_cache_dir=str(tmp_path / "text"),
                         train_variants=variants)
    report = run_benchmark(spec, ["train_step"], isolate=False)
    runs = report["phases"]
    assert list(runs) == ["train_step"] + [f"train_step:{v}" for v in variants[1:]]
    for name, res in runs.items():
        assert res["seconds"]["median"] > 0 and res["gflop_per_step"] > 0, name
        if device == "cuda":
            assert res["cuda_max_allocated_mb"] > 0, name  # the benchmark's CUDA memory figure
    assert runs["train_step:checkpointing"]["gradient_checkpointing"] is True
    assert runs["train_step:accumulate2"]["accumulation_steps"] == 2
    if device == "cuda":
        # recomputation instead of storage: less CUDA memory for the same step
        assert runs["train_step:checkpointing"]["cuda_max_allocated_mb"] < runs["train_step"]["cuda_max_allocated_mb"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device", DEVICES)
def test_one_process_ddp_step_with_accumulation_equals_the_unwrapped_step(tmp_path, device, no_tf32):
    """NCCL on CUDA (gloo on the CPU): a DDP-wrapped model, 2 micro-batches (``no_sync`` then the exchange)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from partcatseg.engine.optim import build_optimizer
    from partcatseg.engine.train_loop import SimpleTrainer

    cfg = setup_cfg(VOC, TINY_OPTS + ["MODEL.DEVICE", device, "MODEL.TEXT_CACHE_DIR", str(tmp_path / "text"),
                                      "SOLVER.IMS_PER_BATCH", "2"])
    vocab = build_model(cfg).train_vocabulary
    g = torch.Generator().manual_seed(0)
    records = [{"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8),
                "sem_seg": torch.randint(0, len(vocab.objects), (64, 64), generator=g),
                "obj_part_sem_seg": torch.randint(0, len(vocab), (64, 64), generator=g)} for _ in range(2)]

    def step(ddp: bool) -> dict:
        torch.manual_seed(0)
        model = build_model(cfg).train()
        net = DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None,
                                      find_unused_parameters=True) if ddp else model
        # 2 micro-batches of 1 image: under DDP the first backward runs in no_sync, the second exchanges
        trainer = SimpleTrainer(net, iter([[records[0]], [records[1]]]), build_optimizer(cfg, model), max_iter=1,
                                accumulation_steps=2)
        trainer.train()
        return {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}

    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                            world_size=1, rank=0, timeout=timedelta(seconds=120))
    try:
        accumulated = step(ddp=True)
    finally:
        dist.destroy_process_group()
    plain = step(ddp=False)
    assert accumulated.keys() == plain.keys() and len(plain) > 20
    for name, grad in plain.items():  # one process: DDP's exchange averages over a world of 1
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(HAS_CUDA, reason="with a GPU the script runs the whole check (make gpu-check)")
def test_gpu_check_script_without_a_gpu_says_so_and_runs_nothing(tmp_path):
    """``tools/gpu_check.sh`` (``make gpu-check``) on a machine without CUDA: one line, exit 2, no output folder."""
    import os
    import subprocess
    import sys

    out = tmp_path / "gpu_check"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), str(out)], capture_output=True, text=True,
                          env={**env, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gpu_check: no CUDA device visible to {sys.executable} (torch.cuda.is_available() is False or torch is "
        "missing); nothing was run"]
    assert not out.exists()
