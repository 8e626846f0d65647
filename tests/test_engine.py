"""Engine: optimizer rules, lr schedules, clipping, the training loop, checkpoints/resume, DDP, signals.

Uses a small synthetic model whose parameter names mimic the real ones ("backbone.*",
"sem_seg_head.predictor.clip_model.*") and a deterministic, resumable synthetic data stream.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partcatseg.config import get_cfg
from partcatseg.engine import (
    EventStorage,
    GradientClipper,
    HookBase,
    Trainer,
    build_gradient_clipper,
    build_lr_scheduler,
    build_optimizer,
    comm,
    default_argument_parser,
    default_setup,
    inference_on_dataset,
    launch,
    seed_all_rng,
    setup_logger,
    unwrap_model,
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
NUM_CLASSES = 4


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def _restore_loggers():
    """setup_logger/default_setup stop propagation to the root logger; undo that for other tests."""
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in ("partcatseg", "fvcore")}
    yield
    for name, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if h not in handlers:
                lg.removeHandler(h)
                h.close()
        lg.propagate, lg.level = propagate, level


class ClipLayerNorm(nn.LayerNorm):
    """Stands in for CLIP's LayerNorm subclass (open_clip.transformer.LayerNorm)."""


class ToyModel(nn.Module):
    """Conv 'backbone' + CLIP-like projection + class embeddings; per-pixel cross-entropy."""

    def __init__(self, nan_loss_at: int = -1, nan_grad_at: int = -1, sleep: float = 0.0):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.backbone.absolute_pos_embed = nn.Parameter(torch.zeros(8, 1, 1))
        clip = nn.Module()
        clip.proj = nn.Linear(8, 8)
        clip.ln = ClipLayerNorm(8)
        clip.positional_embedding = nn.Parameter(torch.zeros(8))
        predictor = nn.Module()
        predictor.clip_model = clip
        predictor.class_embed = nn.Embedding(NUM_CLASSES, 8)
        predictor.dropout = nn.Dropout(0.3)
        predictor.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
        predictor.non_object_embedding = nn.Parameter(torch.zeros(8))  # trainable, never used
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.predictor = predictor
        self.nan_loss_at, self.nan_grad_at, self.sleep = nan_loss_at, nan_grad_at, sleep
        self.calls = 0
        self.last_proj_dtype = None

    def forward(self, batch):
        p = self.sem_seg_head.predictor
        x = self.backbone(batch["image"]) + self.backbone.absolute_pos_embed
        if self.training and self.calls == self.nan_grad_at:
            x.register_hook(lambda g: g * float("nan"))
        f = p.clip_model.proj(x.permute(0, 2, 3, 1))
        self.last_proj_dtype = f.dtype
        f = p.clip_model.ln(f + p.clip_model.positional_embedding)
        logits = (p.dropout(f) @ p.class_embed.weight.t()).permute(0, 3, 1, 2).float()
        if not self.training:
            return [{"sem_seg": lg} for lg in logits]
        loss = F.cross_entropy(logits, batch["target"])
        if self.calls == self.nan_loss_at:
            loss = loss * float("nan")
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        # every entry is logged; only "loss*" keys are summed and optimised
        return {"loss_ce": loss, "loss_reg": 1e-3 * (f**2).mean(), "accuracy": torch.tensor(0.0),
                "term_ce": loss.detach(), "term_aux": 0.5}


_RULE = torch.Generator().manual_seed(123)
_RULE_W = torch.randn(NUM_CLASSES, 3, generator=_RULE)


class ToyData:
    """Infinite deterministic batches; resumable through state_dict/load_state_dict."""

    def __init__(self, seed: int, batch_size: int = 2, size: int = 8):
        self.seed, self.batch_size, self.size = seed, batch_size, size
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
            image = torch.randn(self.batch_size, 3, self.size, self.size, generator=g)
            target = torch.einsum("kc,bchw->bkhw", _RULE_W, image).argmax(1)
            self.position += 1
            yield {"image": image, "target": target}


def make_cfg(out, **overrides):
    opts = {
        "OUTPUT_DIR": str(out),
        "MODEL.DEVICE": "cpu",
        "MODEL.META_ARCHITECTURE": "PartCATSeg",
        "SOLVER.OPTIMIZER": "ADAMW",
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.MAX_ITER": 6,
        "SOLVER.CHECKPOINT_PERIOD": 4,
        "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR",
        "SOLVER.WARMUP_ITERS": 0,
        "SOLVER.WARMUP_FACTOR": 1.0,
        "SOLVER.CLIP_GRADIENTS.ENABLED": True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
        "TEST.EVAL_PERIOD": 0,
    }
    opts.update(overrides)
    cfg = get_cfg()
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def _lr_wd_by_name(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            out[names[id(p)]] = (g["lr"], g["weight_decay"])
    return out


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- optimizer
WD, WDN, WDE = 1e-4, 2e-3, 3e-3


def _opt_cfg(tmp_path, meta="CATSeg"):
    return make_cfg(tmp_path, **{"MODEL.META_ARCHITECTURE": meta, "SOLVER.BASE_LR": 0.1, "SOLVER.WEIGHT_DECAY": WD,
                                 "SOLVER.WEIGHT_DECAY_NORM": WDN, "SOLVER.WEIGHT_DECAY_EMBED": WDE,
                                 "SOLVER.BACKBONE_MULTIPLIER": 0.5, "SOLVER.CLIP_MULTIPLIER": 0.01})


def _expected(clip_lr):
    c = "sem_seg_head.predictor.clip_model."
    return {
        "backbone.absolute_pos_embed": (0.05, 0.0),
        "backbone.0.weight": (0.05, WD),
        "backbone.0.bias": (0.05, WD),
        "backbone.1.weight": (0.05, WDN),
        "backbone.1.bias": (0.05, WDN),
        c + "positional_embedding": (clip_lr, WD),
        c + "proj.weight": (clip_lr, WD),
        c + "proj.bias": (clip_lr, WD),
        c + "ln.weight": (clip_lr, WDN),
        c + "ln.bias": (clip_lr, WDN),
        "sem_seg_head.predictor.class_embed.weight": (0.1, WDE),
        "sem_seg_head.predictor.non_object_embedding": (0.1, WD),
    }


def test_optimizer_param_groups_catseg_rules(tmp_path):
    model = ToyModel()
    cfg = _opt_cfg(tmp_path)
    opt = build_optimizer(cfg, model)  # CAT-Seg CVPR (no DINOv2 backbone): CLIP multiplier applies
    assert isinstance(opt, torch.optim.AdamW)
    got = _lr_wd_by_name(opt, model)
    assert got.keys() == _expected(0.001).keys()  # frozen parameter excluded
    for name, (lr, wd) in _expected(0.001).items():
        assert got[name] == (pytest.approx(lr, rel=1e-12), wd), name
    assert len(opt.param_groups) == 7  # merged by identical (lr, weight_decay)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def test_optimizer_param_groups_partcatseg_ignores_clip_multiplier(tmp_path):
    model = ToyModel()
    opt = build_optimizer(_opt_cfg(tmp_path, meta="PartCATSeg"), model)
    got = _lr_wd_by_name(opt, model)
    for name, (lr, wd) in _expected(0.1).items():
        assert got[name] == (pytest.approx(lr, rel=1e-12), wd), name
    # the part-catseg CATSeg baseline (DINOv2 backbone) is trained by the same script: no CLIP rule
    cfg = _opt_cfg(tmp_path)
    cfg.MODEL.BACKBONE.NAME = "DINOv2Backbone"
    got = _lr_wd_by_name(build_optimizer(cfg, model), model)
    assert got["sem_seg_head.predictor.clip_model.proj.weight"][0] == pytest.approx(0.1)


def test_optimizer_unmerged_groups_follow_official_layout(tmp_path):
    model = ToyModel()
    opt = build_optimizer(_opt_cfg(tmp_path), model, merge_groups=False)
    assert all(len(g["params"]) == 1 for g in opt.param_groups)
    order = [g["names"][0] for g in opt.param_groups]
    assert order == [
        "backbone.absolute_pos_embed", "backbone.0.weight", "backbone.0.bias", "backbone.1.weight",
        "backbone.1.bias", "sem_seg_head.predictor.non_object_embedding",
        "sem_seg_head.predictor.clip_model.positional_embedding", "sem_seg_head.predictor.clip_model.proj.weight",
        "sem_seg_head.predictor.clip_model.proj.bias", "sem_seg_head.predictor.clip_model.ln.weight",
        "sem_seg_head.predictor.clip_model.ln.bias", "sem_seg_head.predictor.class_embed.weight",
    ]
    assert _lr_wd_by_name(opt, model) == _lr_wd_by_name(build_optimizer(_opt_cfg(tmp_path), model), model)


def test_sgd_and_bad_optimizer_name(tmp_path):
    cfg = _opt_cfg(tmp_path)
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.MOMENTUM = 0.8
    opt = build_optimizer(cfg, ToyModel())
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.8
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER='LAMB'"):
        build_optimizer(cfg, ToyModel())


# ---------------------------------------------------------------------------------------- lr schedules
def _lrs(cfg, n):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _cos(x):
    return 0.5 * (1 + math.cos(math.pi * x))


def test_warmup_cosine_matches_closed_form(tmp_path):
    cfg = make_cfg(tmp_path, **{"SOLVER.BASE_LR": 0.1, "SOLVER.MAX_ITER": 10})
    assert _lrs(cfg, 11) == pytest.approx([0.1 * _cos(t / 10) for t in range(11)], rel=1e-12, abs=1e-15)
    cfg.SOLVER.BASE_LR_END = 0.01
    assert _lrs(cfg, 11) == pytest.approx([0.1 * (0.1 + 0.9 * _cos(t / 10)) for t in range(11)], rel=1e-12)
    cfg.SOLVER.BASE_LR_END = 0.0
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_METHOD = 3, 0.001, "linear"
    expected = [0.1 * (0.001 + (_cos(0.3) - 0.001) * t / 3) if t < 3 else 0.1 * _cos(t / 10) for t in range(10)]
    assert _lrs(cfg, 10) == pytest.approx(expected, rel=1e-12)
    cfg.SOLVER.WARMUP_METHOD = "constant"
    expected = [0.1 * 0.001 if t < 3 else 0.1 * _cos(t / 10) for t in range(10)]
    assert _lrs(cfg, 10) == pytest.approx(expected, rel=1e-12)


def test_multistep_and_poly(tmp_path):
    cfg = make_cfg(tmp_path, **{"SOLVER.BASE_LR": 0.1, "SOLVER.MAX_ITER": 10, "SOLVER.LR_SCHEDULER_NAME":
                                "WarmupMultiStepLR", "SOLVER.STEPS": (3, 6, 50), "SOLVER.GAMMA": 0.1})
    assert _lrs(cfg, 10) == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 4, rel=1e-12)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.POLY_LR_POWER = 2, 0.5, 0.9
    expected = [0.1 * ((0.5 * (1 - t / 2) + t / 2) if t < 2 else 1.0) * (1 - t / 10) ** 0.9 for t in range(10)]
    assert _lrs(cfg, 10) == pytest.approx(expected, rel=1e-12)
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.3  # floor once (1 - t/T)^p drops below 0.3
    expected = [e if t < 2 or (1 - t / 10) ** 0.9 >= 0.3 else 0.1 * 0.3 for t, e in enumerate(expected)]
    assert _lrs(cfg, 10) == pytest.approx(expected, rel=1e-12)
    cfg.SOLVER.LR_SCHEDULER_NAME = "OneCycle"
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME='OneCycle'"):
        _lrs(cfg, 1)


def test_scheduler_state_dict_resumes(tmp_path):
    cfg = make_cfg(tmp_path, **{"SOLVER.BASE_LR": 0.1, "SOLVER.MAX_ITER": 10})
    full = _lrs(cfg, 10)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(4):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_lr_scheduler(cfg, opt2)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    rest = []
    for _ in range(6):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx(full[4:], rel=1e-12)


# ---------------------------------------------------------------------------------------- clipping
def _params_with_grads(*grads):
    ps = []
    for g in grads:
        p = nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g, dtype=torch.float32)
        ps.append(p)
    return ps


def test_full_model_gradient_clipping():
    ps = _params_with_grads([3.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0])
    total = GradientClipper("full_model", 0.5)(ps)
    assert float(total) == pytest.approx(5.0)
    after = torch.cat([p.grad for p in ps])
    assert float(after.norm()) == pytest.approx(0.5, rel=1e-5)
    assert after.tolist() == pytest.approx([0.3, 0, 0, 0, 0.4, 0, 0], rel=1e-5)
    # NORM_TYPE is ignored by the official full-model clipper (always L2)
    ps = _params_with_grads([3.0], [4.0])
    clipper = build_gradient_clipper(make_cfg("x", **{"SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.01,
                                                       "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 1.0}))
    clipper(ps)
    assert float(torch.cat([p.grad for p in ps]).norm()) == pytest.approx(0.01, rel=1e-4)


def test_per_parameter_clipping_and_disabled():
    ps = _params_with_grads([3.0, -2.0, 0.5])
    assert float(GradientClipper("value", 1.0)(ps)) == pytest.approx(math.sqrt(13.25))
    assert ps[0].grad.tolist() == [1.0, -1.0, 0.5]
    ps = _params_with_grads([3.0, 0.0], [0.0, 4.0])
    GradientClipper("norm", 1.0)(ps)
    assert [float(p.grad.norm()) for p in ps] == pytest.approx([1.0, 1.0], rel=1e-5)
    ps = _params_with_grads([3.0], [4.0])
    assert float(GradientClipper("full_model", 0.0)(ps)) == pytest.approx(5.0)  # CLIP_VALUE 0 = off
    assert [p.grad.item() for p in ps] == [3.0, 4.0]
    with pytest.raises(ValueError, match="CLIP_TYPE='bogus'"):
        GradientClipper("bogus", 1.0)


# ---------------------------------------------------------------------------------------- training
class _Recorder(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.storage.history("loss_ce").latest())


class _StopAt(HookBase):
    def __init__(self, it):
        self.it = it

    def after_step(self):
        if self.trainer.iter == self.it:
            self.trainer.request_stop("test stop")


def test_training_run_outputs(tmp_path):
    seed_all_rng(0)
    setup_logger(str(tmp_path), name="partcatseg")
    cfg = make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 40, "SOLVER.CHECKPOINT_PERIOD": 20, "TEST.EVAL_PERIOD": 20,
                                "SOLVER.BASE_LR": 0.03})
    evals = []

    def evaluate():
        evals.append(trainer.iter)
        return {"sem_seg": {"mIoU": float(len(evals))}}

    trainer = Trainer.from_config(cfg, ToyModel(), ToyData(1), test_function=evaluate)
    rec = _Recorder()
    trainer.register_hooks([rec])
    results = trainer.train()

    assert sum(rec.losses[-5:]) / 5 < 0.8 * sum(rec.losses[:5]) / 5  # it learns
    assert evals == [19, 40] and results == {"sem_seg": {"mIoU": 2.0}}
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.pth")))
    assert names == ["model_0000019.pth", "model_0000039.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    ckpt = torch.load(tmp_path / "model_0000019.pth", weights_only=True)  # plain tensors/containers only
    assert ckpt["iteration"] == 19 and ckpt["trainer"]["iteration"] == 19
    assert set(ckpt["trainer"]) >= {"optimizer", "hooks", "rank_states"}
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 20  # lr of the next iteration
    assert ckpt["trainer"]["rank_states"][0]["data"] == {"batches_consumed": 20, "loader": {"position": 20}}

    lines = [json.loads(s) for s in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [d["iteration"] for d in lines] == [19, 39, 40]
    assert lines[0]["sem_seg/mIoU"] == 1.0 and lines[2] == {"iteration": 40, "sem_seg/mIoU": 2.0}
    assert {"total_loss", "loss_ce", "loss_reg", "accuracy", "term_ce", "term_aux", "lr", "time", "data_time",
            "grad_norm", "eta_seconds"} <= set(lines[1])
    assert lines[1]["lr"] == pytest.approx(0.03 * _cos(39 / 40), rel=1e-9)
    assert lines[1]["term_aux"] == 0.5
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    log = (tmp_path / "log.txt").read_text()
    # the console line comes from the first iterations on (then every 20); metrics.json keeps the period
    early = [int(s.split("iter: ")[1].split()[0]) for s in log.splitlines() if "iter: " in s and "eta:" in s]
    assert early[:4] == [0, 4, 9, 19]
    progress = [s for s in log.splitlines() if "iter: 39" in s]
    assert progress and all(k in progress[0] for k in ("eta:", "total_loss:", "loss_ce:", "term_ce:", "lr:",
                                                       "time:", "data_time:", "max_mem:"))


def _train_resume_run(out, max_iter=6, stop_at=None, resume=False, init_seed=0, batch_size=2, **overrides):
    seed_all_rng(init_seed)
    cfg = make_cfg(out, **{"SOLVER.MAX_ITER": max_iter, **overrides})
    trainer = Trainer.from_config(cfg, ToyModel(), ToyData(7, batch_size=batch_size))
    if stop_at is not None:
        trainer.register_hooks([_StopAt(stop_at)])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_resume_is_bit_identical(tmp_path):
    straight = _train_resume_run(tmp_path / "a")
    first = _train_resume_run(tmp_path / "b", stop_at=2)
    assert first.interrupted == "test stop" and first.iter == 2
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000002.pth"
    second = _train_resume_run(tmp_path / "b", resume=True, init_seed=99)  # other init and RNG
    assert second.start_iter == 3 and second.interrupted is None
    a = unwrap_model(straight.model).state_dict()
    b = unwrap_model(second.model).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.optimizer.param_groups[0]["lr"] == second.optimizer.param_groups[0]["lr"]
    # without --resume the same directory starts from scratch
    fresh = _train_resume_run(tmp_path / "b", max_iter=1, resume=False)
    assert fresh.start_iter == 0


class StartIterData(ToyData):
    """A loader that cannot save its state but can be built at a given iteration (like build_train_loader)."""

    state_dict = None
    load_state_dict = None

    def __init__(self, seed: int, start_iter: int = 0):
        super().__init__(seed)
        self.position = self.start_iter = start_iter


def test_resume_with_loader_built_at_start_iter(tmp_path):
    straight = _train_resume_run(tmp_path / "a")
    seed_all_rng(0)
    first = Trainer.from_config(make_cfg(tmp_path / "b"), ToyModel(), StartIterData(7))
    first.register_hooks([_StopAt(2)])
    first.train()
    seed_all_rng(5)
    second = Trainer.from_config(make_cfg(tmp_path / "b"), ToyModel(), None)
    second.resume_or_load(resume=True)
    second.data_loader = StartIterData(7, start_iter=second.start_iter)
    second.train()
    a, b = unwrap_model(straight.model).state_dict(), unwrap_model(second.model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_raises_before_the_step(tmp_path):
    cfg = make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 10, "SOLVER.CHECKPOINT_PERIOD": 2})
    trainer = Trainer.from_config(cfg, ToyModel(nan_loss_at=5), ToyData(3))
    snapshot = {}

    class Snap(HookBase):
        def after_step(self):
            snapshot.update({k: v.clone() for k, v in unwrap_model(self.trainer.model).state_dict().items()})

    trainer.register_hooks([Snap()])
    with pytest.raises(FloatingPointError, match=r"loss became NaN or infinite at iteration 5 .*model_0000003\.pth"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert sorted(os.listdir(tmp_path)).count("model_0000005.pth") == 0
    ckpt = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert ckpt["iteration"] == 3
    state = unwrap_model(trainer.model).state_dict()
    for k, v in state.items():  # the weights after iteration 4: the failing step changed nothing
        assert torch.equal(v, snapshot[k]) and torch.isfinite(v).all(), k


def test_nan_gradient_raises(tmp_path):
    trainer = Trainer.from_config(make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 5}), ToyModel(nan_grad_at=2), ToyData(3))
    with pytest.raises(FloatingPointError, match="gradients became NaN or infinite at iteration 2"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not (tmp_path / "last_checkpoint").exists()


def test_bf16_autocast_on_cpu(tmp_path):
    cfg = make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 2, "SOLVER.AMP.ENABLED": True, "SOLVER.AMP.DTYPE": "bf16"})
    model = ToyModel()
    trainer = Trainer.from_config(cfg, model, ToyData(3))
    trainer.train()
    assert model.last_proj_dtype == torch.bfloat16 and trainer.grad_scaler is None
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_loss_dict_without_loss_keys_is_an_error(tmp_path):
    class NoLoss(ToyModel):
        def forward(self, batch):
            return {"accuracy": super().forward(batch)["loss_ce"]}

    trainer = Trainer.from_config(make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 1}), NoLoss(), ToyData(3))
    with pytest.raises(ValueError, match=r"no key starting with 'loss': \['accuracy'\]"):
        trainer.train()


def test_inference_on_dataset_uses_eval_mode():
    class Counter:
        def reset(self):
            self.n, self.modes = 0, []

        def process(self, inputs, outputs):
            self.n += len(outputs)

        def evaluate(self):
            return {"sem_seg": {"count": self.n}}

    model = ToyModel().train()
    loader = [{"image": torch.randn(2, 3, 8, 8)} for _ in range(3)]
    assert inference_on_dataset(model, loader, Counter()) == {"sem_seg": {"count": 6}}
    assert model.training  # mode restored


# ---------------------------------------------------------------------------------------- DDP
def _ddp_main(out_dir: str) -> None:
    rank = comm.get_rank()
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = ToyModel()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = make_cfg(os.path.join(out_dir, "run"), **{"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2})
    trainer = Trainer.from_config(cfg, model, ToyData(10 + rank))  # different data per rank
    trainer.train()
    torch.save({
        "init": init,
        "params": {n: p.detach().clone() for n, p in unwrap_model(trainer.model).named_parameters()},
        "is_ddp": isinstance(trainer.model, nn.parallel.DistributedDataParallel),
        "world": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "gathered": comm.all_gather(rank * 10),
        "reduced": comm.reduce_dict({"x": torch.tensor(float(rank + 1))})["x"],
    }, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_process_gloo_ddp(tmp_path):
    launch(_ddp_main, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path),),
           backend=None if not torch.cuda.is_available() else "gloo")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for r, res in enumerate((r0, r1)):
        assert res["is_ddp"] and res["world"] == 2 and res["local_rank"] == r
        assert res["gathered"] == [0, 10] and float(res["reduced"]) == 1.5
    assert not torch.equal(r0["init"]["backbone.0.weight"], r1["init"]["backbone.0.weight"])
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    assert not torch.equal(r0["params"]["backbone.0.weight"], r0["init"]["backbone.0.weight"])
    ckpt = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)
    assert len(ckpt["trainer"]["rank_states"]) == 2
    assert [s["data"]["loader"]["position"] for s in ckpt["trainer"]["rank_states"]] == [4, 4]
    assert "model.module" not in "".join(ckpt["model"])  # saved without the DDP prefix


def test_launch_rejects_auto_url_on_several_machines():
    with pytest.raises(ValueError, match='dist_url="auto" only works on a single machine'):
        launch(_ddp_main, num_gpus_per_machine=2, num_machines=2, machine_rank=0, dist_url="auto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_environment_is_used(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import torch
        from partcatseg.engine import comm, launch

        def main(out):
            r = comm.get_rank()
            t = comm.reduce_dict({{"v": torch.tensor(float(r))}}, average=False)["v"]
            with open(os.path.join(out, f"rank{{r}}.txt"), "w") as f:
                f.write(f"{{comm.get_world_size()}} {{comm.get_local_rank()}} {{int(t)}} {{comm.all_gather(r)}}")

        launch(main, 8, args=({str(tmp_path)!r},))  # --num-gpus is ignored under torchrun
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(script)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == "2 0 1 [0, 1]"
    assert (tmp_path / "rank1.txt").read_text() == "2 1 1 [0, 1]"


# ---------------------------------------------------------------------------------------- signals
def test_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path):
    script = tmp_path / "slow_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {TESTS_DIR!r})
        from test_engine import ToyData, ToyModel, make_cfg
        from partcatseg.engine import HookBase, Trainer, setup_logger

        out = {str(tmp_path / "out")!r}
        setup_logger(out, name="partcatseg")
        cfg = make_cfg(out, **{{"SOLVER.MAX_ITER": 100000, "SOLVER.CHECKPOINT_PERIOD": 100000}})

        class Ready(HookBase):
            def after_step(self):
                if self.trainer.iter == 2:
                    open(os.path.join(out, "READY"), "w").close()

        trainer = Trainer.from_config(cfg, ToyModel(sleep=0.02), ToyData(1))
        trainer.register_hooks([Ready()])
        trainer.train()
        print(f"RESULT interrupted={{trainer.interrupted}} iter={{trainer.iter}}")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "out" / "READY").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "training subprocess never became ready"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    line = [s for s in stdout.splitlines() if s.startswith("RESULT")][0]
    assert "interrupted=SIGTERM" in line
    stopped_at = int(line.split("iter=")[1])
    name = f"model_{stopped_at:07d}.pth"
    assert (tmp_path / "out" / "last_checkpoint").read_text() == name
    ckpt = torch.load(tmp_path / "out" / name, weights_only=True)
    assert ckpt["iteration"] == stopped_at and ckpt["trainer"]["rank_states"][0]["data"]["batches_consumed"] == \
        stopped_at + 1
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"Training stopped by SIGTERM after iteration {stopped_at}" in log


# ---------------------------------------------------------------------------------------- CLI + setup
def test_argument_parser_trailing_opts():
    args = default_argument_parser().parse_args(
        ["--config-file", "a.yaml", "--num-gpus", "2", "--resume", "SOLVER.BASE_LR", "0.1", "MODEL.WEIGHTS", "w.pth"])
    assert args.config_file == "a.yaml" and args.num_gpus == 2 and args.resume and not args.eval_only
    assert args.opts == ["SOLVER.BASE_LR", "0.1", "MODEL.WEIGHTS", "w.pth"]
    assert (args.num_machines, args.machine_rank, args.dist_url) == (1, 0, "auto")
    args = default_argument_parser().parse_args(["--eval-only", "MODEL.WEIGHTS", "x.pth", "OUTPUT_DIR", "o"])
    assert args.eval_only and args.opts == ["MODEL.WEIGHTS", "x.pth", "OUTPUT_DIR", "o"]
    assert default_argument_parser().parse_args([]).opts == []


def test_default_setup_writes_config_log_and_seeds(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("SOLVER:\n  BASE_LR: 0.123\n")
    cfg = make_cfg(tmp_path / "out", **{"SEED": 5, "SOLVER.BASE_LR": 0.123})
    args = default_argument_parser().parse_args(["--config-file", str(cfg_file)])
    default_setup(cfg, args)
    assert torch.initial_seed() == 5  # SEED + rank 0
    dumped = get_cfg()
    dumped.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    assert dumped.SOLVER.BASE_LR == 0.123 and dumped.OUTPUT_DIR == str(tmp_path / "out")
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Environment info" in log and "BASE_LR: 0.123" in log and "Seeded python/numpy/torch with 5" in log
    cfg.SEED = -1
    default_setup(cfg, args)
    assert "Using a generated random seed" in (tmp_path / "out" / "log.txt").read_text()


def test_event_storage_smoothing():
    with EventStorage(0) as s:
        for i, v in enumerate([5.0, 1.0, 3.0]):
            s.iter = i
            s.put_scalar("loss", v)
            s.put_scalar("lr", v * 10, smoothing_hint=False)
        assert s.latest_with_smoothing_hint(3) == {"loss": (3.0, 2), "lr": (30.0, 2)}
        with pytest.raises(ValueError, match="smoothing_hint"):
            s.put_scalar("lr", 1.0)
