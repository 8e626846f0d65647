"""Checkpoints: what legitimate files pickle loads without trust, anything else is refused and never runs;
safetensors; durable, readable saves; full disks; leftovers of killed saves; resume fallback."""
from __future__ import annotations

import errno
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from filewrap import FullDisk
from torch import nn

import partcatseg.checkpoint as ck
from partcatseg.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointWriteError,
    UnsafeCheckpointError,
    load_safetensors,
    read_checkpoint_file,
    save_safetensors,
)


class Net(nn.Module):
    """Fused attention, a tied embedding/head, and buffers of several dtypes, one non-contiguous."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("transposed", torch.randn(3, 4).t())  # non-contiguous
        self.register_buffer("bf16", torch.randn(5).to(torch.bfloat16))
        self.register_buffer("counts", torch.arange(4, dtype=torch.int64) * (seed + 1))
        self.register_buffer("mask", torch.tensor([True, False, bool(seed % 2)]))

    def forward(self, batch):
        x = self.embed(batch["tokens"])
        y, _ = self.attn(x, x, x)
        return {"loss_lm": nn.functional.cross_entropy(self.head(y).flatten(0, 1), batch["tokens"].flatten())}


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _warnings(records):
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


# ======================================================================= what legitimate files pickle
class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """detectron2.projects.deeplab's scheduler (PartCATSeg / CAT-Seg training): torch's default
    ``state_dict`` pickles every attribute but the optimizer -- ints, floats, a str, lists."""

    def __init__(self, optimizer, max_iters, warmup_factor=1e-3, warmup_iters=1000, warmup_method="linear",
                 last_epoch=-1, power=0.9, constant_ending=0.0):
        self.max_iters, self.warmup_factor, self.warmup_iters = max_iters, warmup_factor, warmup_iters
        self.warmup_method, self.power, self.constant_ending = warmup_method, power, constant_ending
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [lr * (1 - self.last_epoch / self.max_iters) ** self.power for lr in self.base_lrs]


def _trained_optimizer_and_scheduler(model):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    sched = WarmupPolyLR(opt, max_iters=20000, warmup_iters=0)
    model(_batch()).get("loss_lm").backward()
    opt.step()
    sched.step()
    return opt, sched


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"tokens": torch.randint(0, 10, (4, 2), generator=g)}


def _grad_scaler_state():
    try:
        return torch.amp.GradScaler("cpu").state_dict()
    except Exception:  # noqa: BLE001 - older torch: the same plain numbers
        return {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                "_growth_tracker": 0}


def _detectron2_files(model) -> dict[str, dict]:
    """The structures detectron2 writes (read from detectron2's DefaultTrainer / AMPTrainer /
    PeriodicCheckpointer and fvcore's Checkpointer.save) and the shapes released files take."""
    opt, sched = _trained_optimizer_and_scheduler(model)
    state = model.state_dict()  # an OrderedDict with _metadata, as detectron2 saves it
    assert isinstance(state, OrderedDict) and hasattr(state, "_metadata")
    return {
        # DefaultTrainer (detectron2 >= 0.6): checkpointables = {"trainer": DefaultTrainer}
        "detectron2 DefaultTrainer/AMPTrainer": {
            "model": state,
            "trainer": {"iteration": 19999, "hooks": {"LRScheduler": sched.state_dict()},
                        "_trainer": {"iteration": 19999, "optimizer": opt.state_dict(),
                                     "grad_scaler": _grad_scaler_state()}},
            "iteration": 19999,
        },
        # older detectron2: optimizer and scheduler as checkpointables of their own
        "detectron2 optimizer+scheduler": {"model": state, "optimizer": opt.state_dict(),
                                           "scheduler": sched.state_dict(), "iteration": 19999},
        "released, stripped to the model": {"model": state},
        "bare state dict": dict(state),
        "model-zoo style extras": {"model": state, "__author__": "PartCATSeg", "matching_heuristics": True},
        # numpy: arrays as weights, scalars as iteration / lr, a raw np.random state
        "numpy arrays and scalars": {
            "model": {k: v.numpy() if v.dtype != torch.bfloat16 else v for k, v in state.items()},
            "iteration": np.int64(19999),
            "scheduler": {"base_lrs": [np.float64(2e-4)], "last_epoch": np.int64(1)},
            "rng": np.random.get_state(),
        },
    }


def _save_variants(obj, directory: Path, stem: str) -> list[Path]:
    """The same object as a zip-format file (torch >= 1.6) and a legacy-format file (older torch)."""
    zipped, legacy = directory / f"{stem}.pth", directory / f"{stem}_legacy.pth"
    torch.save(obj, zipped)
    torch.save(obj, legacy, _use_new_zipfile_serialization=False)
    return [zipped, legacy]


@pytest.mark.parametrize("kind", ["detectron2 DefaultTrainer/AMPTrainer", "detectron2 optimizer+scheduler",
                                  "released, stripped to the model", "bare state dict", "model-zoo style extras",
                                  "numpy arrays and scalars"])
def test_official_and_detectron2_structures_load_without_trust(kind, tmp_path, logs, monkeypatch):
    monkeypatch.delenv(ck.TRUST_PICKLE_ENV, raising=False)
    source = Net(seed=1)
    files = _save_variants(_detectron2_files(source)[kind], tmp_path, "official")
    for path in files:
        target = Net(seed=2)
        assert not _same_state(source, target)
        logs.clear()
        extra = Checkpointer(target).load(str(path), checkpointables=[])
        assert _same_state(source, target), path
        assert not [m for m in _warnings(logs) if "unpickl" in m or "trust" in m]
        if kind.startswith("detectron2 Default"):
            assert extra["iteration"] == 19999
            opt = torch.optim.AdamW(target.parameters(), lr=1.0)
            opt.load_state_dict(extra["trainer"]["_trainer"]["optimizer"])  # usable, not just readable
            assert opt.param_groups[0]["initial_lr"] == 2e-4 and len(opt.state) == len(list(target.parameters()))
            assert extra["trainer"]["hooks"]["LRScheduler"]["warmup_method"] == "linear"
        if kind.startswith("numpy"):
            assert int(extra["iteration"]) == 19999
            np.random.set_state(extra["rng"])  # a genuine numpy RNG state
    if kind.startswith("numpy"):  # the allow-list is what makes these load -- and only inside our loads
        with pytest.raises(Exception, match="numpy"):
            torch.load(files[0], weights_only=True)


def test_allow_list_is_scoped_to_the_load_and_keeps_user_entries(tmp_path):
    class Mine:
        pass

    original = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([Mine])
    try:
        before = set(torch.serialization.get_safe_globals())
        torch.save({"model": {"w": np.zeros(3, np.float32)}}, tmp_path / "np.pth")
        assert read_checkpoint_file(str(tmp_path / "np.pth"))["model"]["w"].shape == (3,)
        assert set(torch.serialization.get_safe_globals()) == before  # Mine still there, ours gone
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(original)


def test_numpy1_pickles_load_too(tmp_path):
    """Files written under numpy 1 name numpy.core.multiarray (numpy 2: numpy._core.multiarray)."""
    obj = {"model": {"embed.weight": np.ones((10, 8), np.float32)}, "iteration": np.int64(7),
           "rng": np.random.get_state()}
    path = tmp_path / "np1.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    n1 = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert n1 != raw and b"numpy._core" not in n1
    path.write_bytes(n1)
    data = read_checkpoint_file(str(path))
    assert int(data["iteration"]) == 7 and np.array_equal(data["model"]["embed.weight"], np.ones((10, 8)))
    model = Net()
    Checkpointer(model).load(str(path), checkpointables=[])
    assert torch.equal(model.embed.weight, torch.ones(10, 8))


def _toy_trainer(out: Path, seed: int = 0):
    from partcatseg.engine.hooks import LRScheduler
    from partcatseg.engine.train_loop import Trainer

    model = Net(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = WarmupPolyLR(opt, max_iters=100, warmup_iters=0)

    class Data:
        def __init__(self):
            self.position = 0

        def state_dict(self):
            return {"position": self.position}

        def load_state_dict(self, s):
            self.position = s["position"]

        def __iter__(self):
            while True:
                self.position += 1
                yield _batch(self.position)

    trainer = Trainer(model, Data(), opt, max_iter=100, scheduler=sched, hooks=[LRScheduler()])
    trainer.checkpointer = Checkpointer(model, str(out), trainer=trainer)
    return trainer


def test_own_training_checkpoints_load_without_trust_and_restore_rng(tmp_path, monkeypatch):
    monkeypatch.delenv(ck.TRUST_PICKLE_ENV, raising=False)
    trainer = _toy_trainer(tmp_path)
    random.seed(3)
    np.random.seed(3)
    trainer.train(max_iter=3)
    trainer.save_checkpoint("model_0000002")
    # plus raw states as a user's hook might store them: python tuples, numpy's ndarray state
    trainer.checkpointer.save("model_extra", iteration=2, rng_python=random.getstate(),
                              rng_numpy=np.random.get_state(), rng_torch=torch.get_rng_state())
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    path = tmp_path / "model_0000002.pth"
    data = read_checkpoint_file(str(path))
    assert data["trainer"]["iteration"] == trainer.iter and data["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3
    assert {"python", "numpy", "torch"} <= set(data["trainer"]["rank_states"][0]["rng"])
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    extra = read_checkpoint_file(str(tmp_path / "model_extra.pth"))
    random.setstate(extra["rng_python"])
    np.random.set_state(extra["rng_numpy"])
    torch.set_rng_state(extra["rng_torch"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect
    resumed = _toy_trainer(tmp_path, seed=5)
    resumed.resume_or_load(resume=True, weights="")
    assert resumed.start_iter == trainer.iter + 1 and _same_state(trainer.model, resumed.model)


# ======================================================================= malicious files
class Exploit:
    """A ``__reduce__`` payload: unpickling it runs code (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('owned')",))


class SystemExploit(Exploit):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Gadget:
    """Any pickled class instance (no payload by itself)."""

    def __init__(self):
        self.value = 1


def _malicious(kind: str, marker: Path, state: dict) -> dict:
    if kind == "exec payload":
        return {"model": state, "iteration": 1, "extra": Exploit(marker)}
    if kind == "payload inside the state dict":
        return {"model": {**state, "embed.weight": Exploit(marker)}}
    if kind == "os.system payload":
        return {"model": state, "x": SystemExploit(marker)}
    return {"model": state, "config": Gadget()}


EXPECTED_GLOBAL = {"exec payload": "exec", "payload inside the state dict": "exec",
                   "os.system payload": "system", "pickled class": "Gadget"}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("kind", list(EXPECTED_GLOBAL))
def test_malicious_pickle_is_refused_and_never_runs(kind, fmt, tmp_path, monkeypatch):
    monkeypatch.delenv(ck.TRUST_PICKLE_ENV, raising=False)
    marker = tmp_path / "marker"
    path = tmp_path / "downloaded.pth"
    torch.save(_malicious(kind, marker, Net(1).state_dict()), path, _use_new_zipfile_serialization=fmt == "zip")
    model = Net(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for load in (lambda: Checkpointer(model).load_weights(str(path)),
                 lambda: read_checkpoint_file(str(path)),
                 lambda: Checkpointer(model, trust_pickle=False).load(str(path))):
        with pytest.raises(UnsafeCheckpointError) as info:
            load()
        message = str(info.value)
        assert str(path) in message and EXPECTED_GLOBAL[kind] in message
        assert "trust_pickle=True" in message and "PARTCATSEG_TRUST_PICKLE=1" in message
        assert isinstance(info.value, CheckpointError) and any(EXPECTED_GLOBAL[kind] in g for g in info.value.globals)
    assert not marker.exists()  # nothing ran
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing applied


def test_zip_refusal_names_the_full_global(tmp_path):
    path = tmp_path / "x.pth"
    torch.save(_malicious("exec payload", tmp_path / "m", {"a": torch.zeros(1)}), path)
    with pytest.raises(UnsafeCheckpointError, match=r"it pickles builtins\.exec,"):
        read_checkpoint_file(str(path))
    torch.save(_malicious("pickled class", tmp_path / "m", {"a": torch.zeros(1)}), path)
    with pytest.raises(UnsafeCheckpointError, match=r"it pickles test_checkpoint_safety\.Gadget,"):
        read_checkpoint_file(str(path))


def test_opt_in_by_keyword_or_environment_loads_it(tmp_path, monkeypatch, logs):
    """The opt-in works -- which also proves the payload above is live."""
    source = Net(1)
    marker = tmp_path / "marker"
    path = tmp_path / "trusted.pth"
    torch.save(_malicious("exec payload", marker, source.state_dict()), path)
    monkeypatch.delenv(ck.TRUST_PICKLE_ENV, raising=False)
    model = Net(2)
    report = Checkpointer(model, trust_pickle=True).load_weights(str(path))
    assert marker.read_text() == "owned" and _same_state(model, source) and report.loaded
    assert any("full unpickling" in m and str(path) in m for m in _warnings(logs))
    marker.unlink()
    monkeypatch.setenv(ck.TRUST_PICKLE_ENV, "1")
    model = Net(2)
    Checkpointer(model).load_weights(str(path))
    assert marker.exists() and _same_state(model, source)
    marker.unlink()
    with pytest.raises(UnsafeCheckpointError):  # an explicit False beats the environment
        read_checkpoint_file(str(path), trust_pickle=False)
    assert not marker.exists()


def test_resume_never_skips_silently_past_a_malicious_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv(ck.TRUST_PICKLE_ENV, raising=False)
    ckpt = Checkpointer(Net(1), str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    marker = tmp_path / "marker"
    torch.save(_malicious("exec payload", marker, Net(1).state_dict()), tmp_path / "model_0000002.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    with pytest.raises(UnsafeCheckpointError, match="model_0000002.pth"):
        Checkpointer(Net(2), str(tmp_path)).resume_or_load("", resume=True)
    assert not marker.exists()


# ======================================================================= safetensors
def test_safetensors_roundtrip_tied_noncontiguous_dtypes(tmp_path):
    source = Net(1)
    assert not source.transposed.is_contiguous() and source.head.weight is source.embed.weight
    path = Checkpointer(source, str(tmp_path)).save_weights("weights.safetensors")
    assert path == str(tmp_path / "weights.safetensors")
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        stored = set(f.keys())
        meta = f.metadata()
    assert "head.weight" not in stored and '"head.weight": "embed.weight"' in meta["partcatseg.aliases"]
    target = Net(2)
    report = Checkpointer(target).load_weights(path, strict=True)
    assert report.clean and _same_state(source, target)
    assert target.bf16.dtype == torch.bfloat16 and target.counts.dtype == torch.int64 and target.mask.dtype == torch.bool
    assert target.head.weight is target.embed.weight  # still tied after loading
    # a file without the alias (e.g. written by another tool) loads too: the tied twin is not "missing"
    save_safetensors({k: v for k, v in source.state_dict().items() if k != "head.weight"}, str(tmp_path / "x.safetensors"))
    report = Checkpointer(Net(2)).load_weights(str(tmp_path / "x.safetensors"))
    assert report.missing == []


def test_safetensors_shared_views_are_copied_not_aliased(tmp_path):
    base = torch.arange(24, dtype=torch.float64)
    state = {"a": base[:12].view(3, 4), "b": base[12:].view(3, 4), "c": base.view(4, 6).t(), "d": base}
    save_safetensors(state, str(tmp_path / "v.safetensors"))
    back = load_safetensors(str(tmp_path / "v.safetensors"))
    assert all(torch.equal(back[k], v) and back[k].dtype == torch.float64 for k, v in state.items())


class SplitAttention(nn.Module):
    """CAT-Seg CVPR-style split q/k/v projection keys."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.Module()
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            setattr(self.attn, name, nn.Parameter(torch.zeros(8, 8)))
        self.attn.in_proj_bias = nn.Parameter(torch.zeros(24))
        self.attn.out_proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11, bias=False)  # another vocabulary size: a shape mismatch


def test_safetensors_get_the_same_conversions_as_pth(tmp_path, logs):
    source = Net(1)
    state = {"module." + k: v for k, v in source.state_dict().items()}  # a DDP-wrapped save
    save_safetensors(state, str(tmp_path / "ddp.safetensors"))
    target = SplitAttention()
    report = Checkpointer(target).load_weights(str(tmp_path / "ddp.safetensors"))
    fused = source.attn.in_proj_weight
    assert torch.equal(target.attn.k_proj_weight, fused[8:16]) and torch.equal(target.embed.weight, source.embed.weight)
    assert report.shape_mismatch == [("head.weight", (10, 8), (11, 8))]
    assert "shape-mismatched (skipped) 1" in "\n".join(_warnings(logs))


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(Net().state_dict(), str(path))
    raw = path.read_bytes()
    assert ck.checkpoint_problem(str(path)) is None
    path.write_bytes(raw[: len(raw) - 100])
    assert "truncated" in ck.checkpoint_problem(str(path))
    with pytest.raises(CheckpointError, match=r"(?s)w\.safetensors.*truncated or is not a safetensors file"):
        Checkpointer(Net()).load_weights(str(path))


# ======================================================================= durable, readable saves
@pytest.fixture
def umask027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_saved_files_get_the_umask_mode_not_0600(tmp_path, umask027):
    ckpt = Checkpointer(Net(), str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    ckpt.save_weights("weights.safetensors")
    for name in ("model_0000001.pth", "last_checkpoint", "weights.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == umask027, name


def test_file_is_fsynced_before_and_directory_after_the_rename(tmp_path, monkeypatch, logs):
    events = []
    real_fsync = os.fsync
    final = tmp_path / "model_0000001.pth"

    def fsync(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        events.append(("dir" if is_dir else "file", final.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    Checkpointer(Net(), str(tmp_path)).save("model_0000001", iteration=1)
    # checkpoint: file before its rename, directory after; then the same for last_checkpoint
    assert events == [("file", False), ("dir", True), ("file", True), ("dir", True)]

    def no_dir_fsync(fd):  # e.g. some network file systems
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    Checkpointer(Net(), str(tmp_path)).save("model_0000002", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth" and _warnings(logs) == []


def test_full_disk_names_the_path_and_changes_nothing(tmp_path, monkeypatch):
    ckpt = Checkpointer(Net(1), str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    good = (tmp_path / "model_0000001.pth").read_bytes()
    real_open = ck._open_for_write
    monkeypatch.setattr(ck, "_open_for_write", lambda fd: FullDisk(real_open(fd)))
    with pytest.raises(CheckpointWriteError) as info:
        ckpt.save("model_0000002", iteration=2)
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, CheckpointError) and err.errno == errno.ENOSPC
    message = str(err)
    assert str(tmp_path / "model_0000002.pth") in message and "No space left on device" in message
    assert f"free in {tmp_path}" in message
    assert "basic_ios" not in message and "unexpected pos" not in message
    assert isinstance(err.__cause__, RuntimeError)  # what torch.save itself raised
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    # the disk fills up between the checkpoint and its tag: the tag keeps naming the previous one
    monkeypatch.setattr(ck, "_open_for_write", real_open)
    real_atomic_text = ck._atomic_write_text

    def tag_on_full_disk(path, text, **kw):
        monkeypatch.setattr(ck, "_open_for_write", lambda fd: FullDisk(real_open(fd), room=3))
        try:
            real_atomic_text(path, text, **kw)
        finally:
            monkeypatch.setattr(ck, "_open_for_write", real_open)

    monkeypatch.setattr(ck, "_atomic_write_text", tag_on_full_disk)
    with pytest.raises(CheckpointWriteError, match="last_checkpoint"):
        ckpt.save("model_0000003", iteration=3)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# ======================================================================= leftovers of killed saves
KILLED_SAVE = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, sys.argv[2])
    import partcatseg.checkpoint as ck
    from filewrap import FileWrapper
    from test_checkpoint_safety import Net
    out, paused = sys.argv[1], sys.argv[3]
    ckpt = ck.Checkpointer(Net(1), out)
    ckpt.save("model_0000001", iteration=1)
    real_open = ck._open_for_write

    class Hang(FileWrapper):  # past 2000 bytes: flushes, signals the test, and waits to be killed
        def write(self, b):
            n = super().write(b)
            if self.n > 2000:
                self.f.flush()
                open(paused, "w").close()
                time.sleep(600)
            return n

    ck._open_for_write = lambda fd: Hang(real_open(fd))
    ckpt.save("model_0000002", iteration=2)
""")


def test_kill_during_save_leaves_a_temporary_that_the_next_start_removes(tmp_path, logs):
    out = tmp_path / "run"
    out.mkdir()
    paused = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(out), str(REPO / "tests"), str(paused)],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not paused.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (temp,) = [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert temp.name.startswith(f".tmp-model_0000002.pth.{ck._host_token()}.{proc.pid}.")
    assert temp.name.endswith(".partial")
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_0000002.pth").exists()
    assert read_checkpoint_file(str(out / "model_0000001.pth"))["iteration"] == 1

    Checkpointer(Net(), str(out))
    assert temp.exists()  # seconds old: could belong to a writer that has not locked it yet
    old = time.time() - 60
    os.utime(temp, (old, old))
    Checkpointer(Net(), str(out), save_to_disk=False)  # another DDP rank: never cleans
    assert temp.exists()
    logs.clear()
    Checkpointer(Net(), str(out))
    assert not temp.exists()
    assert any("removed 1 stale temporary" in r.getMessage() and temp.name in r.getMessage() for r in logs)
    assert sorted(p.name for p in out.iterdir()) == ["last_checkpoint", "model_0000001.pth"]


@pytest.mark.skipif(ck.fcntl is None, reason="needs POSIX advisory locks")
def test_which_temporaries_count_as_leftovers(tmp_path, logs):
    import fcntl

    host = ck._host_token()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # a process of this host that has exited
    now = time.time()
    files = {  # name: (age in seconds, removed?)
        f".tmp-model_0000005.pth.{host}.{dead}.abcd1234.partial": (60, True),        # a killed save
        f".tmp-model_0000006.pth.{host}.{dead}.efgh5678.partial": (60, False),       # ...but someone holds its lock
        f".tmp-model_0000007.pth.{host}.{os.getpid()}.mnop3456.partial": (60, True),  # unlocked: its write is over
        f".tmp-last_checkpoint.{host}.{dead}.ijkl9012.partial": (2, False),          # young: maybe not locked yet
        f".tmp-model_0000008.pth.other-node.{dead}.qrst7890.partial": (1800, False),  # another host, 30 min
        f".tmp-model_0000009.pth.other-node.{dead}.uvwx1234.partial": (7200, True),   # another host, 2 h
        ".tmp-k2j4h5g6.pth": (1800, False),                                           # earlier version, 30 min
        ".tmp-z9y8x7w6.pth": (7200, True),                                            # earlier version, 2 h
        ".tmp-notes.txt": (7200, False),                                              # not our naming scheme
        "model_0000001.pth": (7200, False),
    }
    for name, (age, _) in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (now - age, now - age))
    holder = open(tmp_path / f".tmp-model_0000006.pth.{host}.{dead}.efgh5678.partial", "rb")  # noqa: SIM115
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live writer in another process
    try:
        removed = ck.remove_stale_temporaries(str(tmp_path))
    finally:
        holder.close()
    assert sorted(removed) == sorted(n for n, (_, gone) in files.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, (_, gone) in files.items() if not gone)
    (message,) = [r.getMessage() for r in logs if "stale temporary" in r.getMessage()]
    assert f"removed {len(removed)} stale temporary file(s)" in message and all(n in message for n in removed)


# ======================================================================= resume fallback
def _series(out: Path, iterations=(1, 2, 3), final=False) -> Checkpointer:
    """Checkpoints whose weights and optimizer state identify their iteration."""
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = Checkpointer(model, str(out), optimizer=opt)
    for it in iterations:
        with torch.no_grad():
            model.counts.fill_(it)
        opt.param_groups[0]["lr"] = it / 10
        ckpt.save(f"model_{it:07d}", iteration=it)
    if final:
        with torch.no_grad():
            model.counts.fill_(99)
        ckpt.save("model_final", iteration=99)
    return ckpt


def _resume(out: Path, weights=""):
    model = Net(seed=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ckpt = Checkpointer(model, str(out), optimizer=opt)
    extra = ckpt.resume_or_load(weights, resume=True)
    return ckpt, model, opt, extra


def _truncate(path: Path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_healthy_resume_uses_last_checkpoint_quietly(tmp_path, logs):
    _series(tmp_path)
    ckpt, model, opt, extra = _resume(tmp_path)
    assert extra["iteration"] == 3 and int(model.counts[0]) == 3 and opt.param_groups[0]["lr"] == 0.3
    assert ckpt.has_checkpoint() and ckpt.get_checkpoint_file() == str(tmp_path / "model_0000003.pth")
    assert _warnings(logs) == []


@pytest.mark.parametrize("damage, fragment, used", [
    (lambda d: _truncate(d / "model_0000003.pth"), "model_0000003.pth, which is truncated", 2),
    (lambda d: (d / "model_0000003.pth").unlink(), "model_0000003.pth, which does not exist", 2),
    (lambda d: (d / "last_checkpoint").write_bytes(b"\x00\xff\x13garbage"), "does not name a checkpoint file", 3),
    (lambda d: (d / "last_checkpoint").write_text("../../etc/passwd"), "does not name a checkpoint file", 3),
    (lambda d: (d / "last_checkpoint").write_text(""), "does not name a checkpoint file", 3),
], ids=["truncated", "deleted", "binary garbage", "a path", "empty"])
def test_broken_last_checkpoint_falls_back_to_the_newest_loadable(tmp_path, logs, damage, fragment, used):
    _series(tmp_path)
    damage(tmp_path)
    ckpt, model, opt, extra = _resume(tmp_path)
    warnings = _warnings(logs)
    assert len(warnings) == 1, warnings
    chosen = tmp_path / f"model_{used:07d}.pth"
    assert fragment in warnings[0] and f"resuming from {chosen} instead" in warnings[0]
    assert str(tmp_path / "last_checkpoint") in warnings[0]
    assert extra["iteration"] == used and int(model.counts[0]) == used and opt.param_groups[0]["lr"] == used / 10
    assert ckpt.has_checkpoint() and ckpt.get_checkpoint_file() == str(chosen)


def test_fallback_also_when_only_the_full_read_fails(tmp_path, logs):
    """The zip directory is intact (cheap check passes) but the pickled data is damaged."""
    _series(tmp_path)
    path = tmp_path / "model_0000003.pth"
    import zipfile

    with zipfile.ZipFile(path) as z:
        (info,) = [i for i in z.infolist() if i.filename.endswith("/data.pkl")]
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(raw[info.header_offset + o:info.header_offset + o + 2], "little")
                           for o in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len  # the pickle itself
    assert raw[start] == 0x80  # PROTO opcode
    raw[start + 2:start + 34] = b"\xfe" * 32
    path.write_bytes(bytes(raw))
    assert ck.checkpoint_problem(str(path)) is None
    ckpt, model, _, extra = _resume(tmp_path)
    assert extra["iteration"] == 2
    assert "cannot be loaded" in _warnings(logs)[0] and str(path) in _warnings(logs)[0]


def test_fallback_order_final_then_iteration_then_mtime(tmp_path, logs):
    _series(tmp_path, iterations=(10, 2, 3), final=True)
    now = time.time()
    for name, age in (("model_0000010.pth", 300), ("model_0000002.pth", 10), ("model_0000003.pth", 5)):
        os.utime(tmp_path / name, (now - age, now - age))
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")  # deleted by hand, say
    _, model, _, extra = _resume(tmp_path)
    assert extra["iteration"] == 99  # model_final.pth counts as newest
    (tmp_path / "model_final.pth").write_bytes(b"")
    _, model, _, extra = _resume(tmp_path)
    assert extra["iteration"] == 10  # by the iteration in the name, not by mtime


def test_nothing_loadable_starts_from_model_weights(tmp_path, logs):
    out = tmp_path / "out"
    _series(out, iterations=(1, 2))
    _truncate(out / "model_0000002.pth")
    _truncate(out / "model_0000001.pth")
    weights = tmp_path / "init.safetensors"
    source = Net(seed=3)
    save_safetensors(source.state_dict(), str(weights))
    assert Checkpointer(Net(), str(out)).has_checkpoint() is False  # so train_net fills pretrained encoders
    ckpt, model, opt, extra = _resume(out, weights=str(weights))
    warnings = _warnings(logs)
    assert len(warnings) == 1
    assert "model_0000002.pth, which is truncated" in warnings[0] and "model_0000001.pth" in warnings[0]
    assert f"starting from MODEL.WEIGHTS = {weights}" in warnings[0]
    assert _same_state(model, source) and opt.param_groups[0]["lr"] == 0.5 and "iteration" not in extra
    assert ckpt.has_checkpoint() is False and ckpt.get_checkpoint_file() == ""


def test_trainer_start_iter_follows_the_fallback(tmp_path):
    trainer = _toy_trainer(tmp_path)
    trainer.train(max_iter=4)
    for it in (1, 3):
        trainer.iter = it
        trainer.save_checkpoint(f"model_{it:07d}")
    _truncate(tmp_path / "model_0000003.pth")
    resumed = _toy_trainer(tmp_path, seed=5)
    resumed.resume_or_load(resume=True, weights="")
    assert resumed.start_iter == 2 and resumed.checkpointer.get_checkpoint_file().endswith("model_0000001.pth")
    _truncate(tmp_path / "model_0000001.pth")
    fresh = _toy_trainer(tmp_path, seed=5)
    fresh.resume_or_load(resume=True, weights="")
    assert fresh.start_iter == 0 and not fresh.checkpointer.has_checkpoint()
    fresh.iter = 0
    fresh.save_checkpoint("model_0000000")  # a new save makes last_checkpoint authoritative again
    assert fresh.checkpointer.has_checkpoint() and fresh.checkpointer.get_checkpoint_file().endswith("model_0000000.pth")


def test_no_last_checkpoint_keeps_fvcore_semantics(tmp_path):
    _series(tmp_path)
    (tmp_path / "last_checkpoint").unlink()
    ckpt, model, _, extra = _resume(tmp_path)
    assert extra == {} and not ckpt.has_checkpoint() and int(model.counts[0]) == 0
