"""Gradient accumulation (SOLVER.MICRO_BATCH_SIZE): a larger DDP batch reproduced with fewer processes.

The loader hands each process the micro-batches the ranks of the larger job would take; the trainer
averages their gradients into one optimizer step. Checked against a real multi-process gloo DDP run
of the toy PartCATSeg, and for the loop's bookkeeping (schedule, logging, resume) on test_engine's
tiny model.
"""
from __future__ import annotations

import os

import pytest
import torch

from partcatseg.config import ConfigError, get_cfg, resolve_micro_batches
from partcatseg.data.build import build_train_loader
from partcatseg.engine import HookBase, Trainer, comm, launch, seed_all_rng, unwrap_model
from conftest import REPO
from test_engine import ToyData, ToyModel, _restore_loggers, _train_resume_run, make_cfg  # noqa: F401 (autouse fixture)

TOY_CFG = str(REPO / "configs/toy/partcatseg_toy.yaml")


# ------------------------------------------------------------------------------------ config
def test_micro_batch_resolution_and_clear_errors():
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 4
    assert resolve_micro_batches(cfg, 1) == (4, 1)  # 0 = no accumulation
    cfg.SOLVER.MICRO_BATCH_SIZE = 1
    assert resolve_micro_batches(cfg, 1) == (1, 4)  # the official 4 GPUs x 1 image on one process
    assert resolve_micro_batches(cfg, 2) == (1, 2)
    assert resolve_micro_batches(cfg, 4) == (1, 1)
    cfg.SOLVER.MICRO_BATCH_SIZE = 2
    with pytest.raises(ConfigError, match=r"SOLVER.MICRO_BATCH_SIZE=2 must divide the images per process, "
                                          r"SOLVER.IMS_PER_BATCH / processes = 4 / 4 = 1"):
        resolve_micro_batches(cfg, 4)
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH=4 must be a positive multiple of the number of "
                                          r"processes \(3\)"):
        resolve_micro_batches(cfg, 3)
    from partcatseg.config import setup_cfg

    with pytest.raises(ConfigError, match=r"SOLVER.MICRO_BATCH_SIZE=3: expected a divisor of SOLVER.IMS_PER_BATCH=4"):
        setup_cfg(TOY_CFG, ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MICRO_BATCH_SIZE", "3"])
    with pytest.raises(ConfigError, match=r"SOLVER.MICRO_BATCH_SIZE=-1: expected 0 \(no accumulation\)"):
        setup_cfg(TOY_CFG, ["SOLVER.MICRO_BATCH_SIZE", "-1"])


# ------------------------------------------------------------------------------------ loader
def _index_mapper(record, rng):
    return {"index": record["index"], "draw": rng.py.random()}  # the augmentation draw of its stream position


def _items(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("world,steps", [(1, 4), (2, 2)])
def test_micro_batches_are_the_batches_of_the_larger_job(world, steps):
    records = [{"file_name": f"r{i}.jpg", "index": i} for i in range(11)]
    total, iters = 8, 3  # 4 ranks x 2 images per step in the reference job
    reference = [build_train_loader(records, _index_mapper, total_batch_size=total, seed=5, rank=r, world_size=4,
                                    start_iter=0) for r in range(4)]
    ref_batches = [_items(loader, iters) for loader in reference]  # [rank][iteration] -> list of dicts
    for rank in range(world):
        loader = build_train_loader(records, _index_mapper, total_batch_size=total, seed=5, rank=rank,
                                    world_size=world, accumulation_steps=steps)
        assert loader.batch_size == total // (world * steps) and loader.accumulation_steps == steps
        micro = _items(loader, iters * steps)
        for it in range(iters):
            for k in range(steps):
                # micro-batch k of rank `rank` = the batch of rank rank * steps + k of the 4-process job
                assert micro[it * steps + k] == ref_batches[rank * steps + k][it], (rank, it, k)
            assert loader.record_indices(it) == [d["index"] for k in range(steps)
                                                 for d in micro[it * steps + k]]
    # resuming at iteration 2 starts at that iteration's first micro-batch
    late = build_train_loader(records, _index_mapper, total_batch_size=total, seed=5, rank=0, world_size=world,
                              accumulation_steps=steps, start_iter=2)
    assert _items(late, steps) == _items(build_train_loader(records, _index_mapper, total_batch_size=total, seed=5,
                                                            rank=0, world_size=world, accumulation_steps=steps),
                                         3 * steps)[2 * steps:]
    with pytest.raises(ValueError, match="multiple of world_size=1 x accumulation_steps=3"):
        build_train_loader(records, _index_mapper, total_batch_size=8, rank=0, world_size=1, accumulation_steps=3)


# ------------------------------------------------------------------------------------ trainer
class _Slices:
    """ToyData batches of 4 images handed out as ``parts`` consecutive micro-batches."""

    def __init__(self, parts: int):
        self.parts = parts
        self.source = ToyData(7, batch_size=4)
        self.micro_batches = 0

    def __iter__(self):
        for batch in self.source:
            size = 4 // self.parts
            for k in range(self.parts):
                self.micro_batches += 1
                yield {key: value[k * size:(k + 1) * size] for key, value in batch.items()}


class _Lr(HookBase):
    def __init__(self):
        self.lrs, self.grads = [], []

    def after_step(self):
        self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])
        model = unwrap_model(self.trainer.model)
        self.grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


def _run(out, parts, max_iter=3, **overrides):
    seed_all_rng(0)
    model = ToyModel()
    model.sem_seg_head.predictor.dropout.p = 0.0  # deterministic: equal gradients are expected
    cfg = make_cfg(out, **{"SOLVER.MAX_ITER": max_iter, "SOLVER.IMS_PER_BATCH": 4,
                           "SOLVER.MICRO_BATCH_SIZE": 4 // parts, "SOLVER.WARMUP_ITERS": 2,
                           "SOLVER.WARMUP_FACTOR": 0.1, **overrides})
    data = _Slices(parts)
    trainer = Trainer.from_config(cfg, model, data)
    hook = _Lr()
    trainer.register_hooks([hook])
    trainer.train()
    return trainer, hook, data


def test_accumulated_step_equals_the_full_batch_step_and_counts_optimizer_steps(tmp_path):
    full, full_hook, full_data = _run(tmp_path / "full", parts=1)
    acc, acc_hook, acc_data = _run(tmp_path / "acc", parts=4)
    assert full.accumulation_steps == 1 and acc.accumulation_steps == 4
    assert acc.iter == full.iter == 3 and acc_data.micro_batches == 12 and full_data.micro_batches == 3
    assert acc_hook.lrs == full_hook.lrs  # the warm-up and cosine schedule see optimizer steps
    # per-pixel cross-entropy over equal-size images: the mean of 4 one-image means is the 4-image mean
    for step in range(3):
        for name, g in full_hook.grads[step].items():
            torch.testing.assert_close(acc_hook.grads[step][name], g, rtol=1e-5, atol=1e-7, msg=name)
    # the logged losses are the means over the micro-batches, one record per optimizer step
    history = acc.storage.history("loss_ce").values()
    assert [it for _, it in history] == [0, 1, 2]
    assert history[-1][0] == pytest.approx(full.storage.history("loss_ce").latest(), rel=1e-5)
    ckpt = torch.load(tmp_path / "acc" / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 2  # iterations are optimizer steps
    assert ckpt["trainer"]["rank_states"][0]["data"]["batches_consumed"] == 12


def _resumable_run(out, **kwargs):
    """test_engine's resume run with 2 micro-batches of 2 images per optimizer step."""
    return _train_resume_run(out, **kwargs, **{"SOLVER.IMS_PER_BATCH": 4, "SOLVER.MICRO_BATCH_SIZE": 2})


def test_resume_with_accumulation_is_bit_identical(tmp_path):
    straight = _resumable_run(tmp_path / "a")
    first = _resumable_run(tmp_path / "b", stop_at=2)
    assert first.interrupted == "test stop" and first.data_loader.position == 6  # 3 steps x 2 micro-batches
    second = _resumable_run(tmp_path / "b", resume=True, init_seed=99)
    assert second.start_iter == 3 and second.data_loader.position == 12
    a, b = unwrap_model(straight.model).state_dict(), unwrap_model(second.model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_and_trainer_must_agree_on_accumulation(tmp_path):
    cfg = make_cfg(tmp_path, **{"SOLVER.IMS_PER_BATCH": 4, "SOLVER.MICRO_BATCH_SIZE": 2})
    records = [{"file_name": f"r{i}.jpg", "index": i} for i in range(4)]
    loader = build_train_loader(records, _index_mapper, total_batch_size=4, rank=0, world_size=1)  # no accumulation
    trainer = Trainer.from_config(cfg, ToyModel(), loader)
    with pytest.raises(ValueError, match="hands out 1 micro-batch.*accumulates 2"):
        trainer.train()


# ------------------------------------------------------------------------------------ real DDP
def _toy_step_main(out_file: str, dataset_root: str, micro: int) -> None:
    """One optimizer step of the toy PartCATSeg at IMS_PER_BATCH 4; rank 0 saves the gradients."""
    from partcatseg.data.datasets.registry import set_dataset_root

    previous = set_dataset_root(dataset_root)  # restored below: the single-process run is this test process
    try:
        _toy_step(out_file, micro)
    finally:
        set_dataset_root(previous)


def _toy_step(out_file: str, micro: int) -> None:
    from partcatseg.config import setup_cfg
    from partcatseg.engine.runner import train_loader_from_config
    from partcatseg.modeling import build_model

    cfg = setup_cfg(TOY_CFG, ["MODEL.DEVICE", "cpu", "MODEL.TEXT_CACHE_DIR", os.path.join(os.path.dirname(out_file),
                              f"text{comm.get_rank()}"), "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MICRO_BATCH_SIZE",
                              str(micro), "SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "1000", "SEED", "11",
                              "DATASETS.TEST", "()", "SOLVER.WATCHDOG_SECONDS", "0",
                              "OUTPUT_DIR", os.path.join(os.path.dirname(out_file), f"run_{micro}_{comm.get_world_size()}")])
    seed_all_rng(3)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = build_model(cfg)
    trainer = Trainer.from_config(cfg, model, None)
    trainer.data_loader = train_loader_from_config(cfg)
    trainer.train()
    if comm.is_main_process():
        net = unwrap_model(trainer.model)
        torch.save({"grads": {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None},
                    "loss": trainer.storage.history("total_loss").latest(),
                    "steps": trainer.accumulation_steps,
                    "images": trainer.data_loader.batch_size}, out_file)


@pytest.mark.slow
def test_accumulation_reproduces_a_four_process_ddp_step(tmp_path, monkeypatch):
    from partcatseg.data.datasets import make_toy_dataset

    root = tmp_path / "datasets"
    make_toy_dataset(str(root / "ToyPart"), seed=0, num_train=12, num_val=2)
    ddp = tmp_path / "ddp4.pt"
    launch(_toy_step_main, num_gpus_per_machine=4, dist_url="auto", backend="gloo", args=(str(ddp), str(root), 0))
    half = tmp_path / "ddp2_acc2.pt"
    launch(_toy_step_main, num_gpus_per_machine=2, dist_url="auto", backend="gloo", args=(str(half), str(root), 1))
    single = tmp_path / "acc4.pt"
    _toy_step_main(str(single), str(root), 1)
    ref = torch.load(ddp, weights_only=True)
    assert ref["steps"] == 1 and ref["images"] == 1
    for path, steps in ((half, 2), (single, 4)):
        got = torch.load(path, weights_only=True)
        assert got["steps"] == steps and got["images"] == 1
        assert got["grads"].keys() == ref["grads"].keys() and len(ref["grads"]) > 50
        for name, g in ref["grads"].items():
            # same images, same initial weights: only the summation order of the gradients differs
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
