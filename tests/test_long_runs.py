"""Long runs: collective timeout, progress watchdog, weights check, bad training records.

Uses test_engine's tiny model and data (milliseconds per step); DDP runs are 2 gloo CPU processes.
A "stalled rank" is a worker that SIGSTOPs itself: its process (and its heartbeat thread) freezes
while the other rank waits for it in a collective.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest
import torch
from torch import nn

from partcatseg.data.build import build_train_loader
from partcatseg.data.mappers import BadRecordError
from partcatseg.engine import HookBase, Trainer, comm, launch, seed_all_rng, setup_logger, unwrap_model
from partcatseg.engine.hooks import ProgressWatchdog, judge_stall
from partcatseg.engine.launch import STALL_EXIT_CODE, WorkerStalledError, as_timeout
from partcatseg.engine.train_loop import TooManyBadRecordsError
from test_engine import REPO_ROOT, TESTS_DIR, ToyData, ToyModel, _restore_loggers, make_cfg  # noqa: F401

PY = sys.executable


def _alive(pid: int) -> bool:
    """Whether ``pid`` still exists as a process that is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] != "Z"


def _heartbeat_pids(out) -> dict:
    pids = {}
    for path in glob.glob(os.path.join(str(out), "heartbeats", "rank*.json")):
        with open(path) as f:
            hb = json.load(f)
        pids[hb["rank"]] = hb["pid"]
    return pids


# ------------------------------------------------------------------------------ judge (pure logic)
def _hb(phase, iteration, age=0.0, done=None, allowance=10.0):
    return {"phase": phase, "iteration": iteration, "age": age, "allowance": allowance,
            "last_completed": iteration - 1 if done is None else done, "pid": 1, "host": "h"}


def test_judge_blames_the_rank_whose_heartbeat_stopped():
    beats = {0: _hb("backward", 7, age=12.0), 1: _hb("forward", 7, age=0.5, done=5)}
    beats[0]["synced"] = 7  # rank 0 passed the collective of iteration 7: rank 1 finished iteration 6 at least
    verdict = judge_stall(beats, {1: 11.0}, world_size=2, me=0, limit=10.0)
    assert verdict.ranks == [1] and verdict.last_completed == [6]
    assert verdict.seconds == pytest.approx(11.5)
    line = verdict.message("out/model_0000005.pth")
    assert line == ("rank 1 made no progress for 12 s (last iteration 6); stopping all ranks; "
                    "last checkpoint: out/model_0000005.pth")
    # silent, but for less than the limit: not yet
    assert judge_stall(beats, {1: 9.0}, world_size=2, me=0, limit=10.0) is None


def test_judge_blames_the_rank_furthest_behind_when_all_are_stuck():
    # rank 2 is alive (heartbeat moving) but stuck reading data; ranks 0 and 1 wait in the gradient all-reduce
    beats = {0: _hb("backward", 7, age=15.0), 1: _hb("backward", 7, age=14.0), 2: _hb("data", 7, age=13.0)}
    verdict = judge_stall(beats, {1: 0.0, 2: 0.0}, world_size=3, me=0, limit=10.0)
    assert verdict.ranks == [2]
    # the rank behind is within its allowance (first iteration: 600 s): nobody is blamed yet
    beats[2] = _hb("data", 7, age=13.0, allowance=600.0)
    assert judge_stall(beats, {1: 0.0, 2: 0.0}, world_size=3, me=0, limit=10.0) is None
    # the rank behind is writing a checkpoint (untimed): the others wait for it, no verdict
    beats[2] = _hb("after_step", 6, age=300.0)
    assert judge_stall(beats, {1: 0.0, 2: 0.0}, world_size=3, me=0, limit=10.0) is None
    # all at the same point and all stuck (a deadlock): everybody is named
    beats = {0: _hb("forward", 3, age=20.0), 1: _hb("forward", 3, age=20.0)}
    assert judge_stall(beats, {1: 0.0}, world_size=2, me=0, limit=10.0).ranks == [0, 1]
    # a single process stuck in its data loader
    verdict = judge_stall({0: _hb("data", 0, age=11.0, done=-1)}, {}, world_size=1, me=0, limit=10.0)
    assert verdict.ranks == [0]
    assert "(no iteration finished yet)" in verdict.message("")
    assert verdict.message("").endswith("last checkpoint: none")


def test_judge_missing_and_finished_ranks():
    beats = {0: _hb("exchange", 4, age=30.0)}
    # rank 1 never wrote a heartbeat this run: silent since this rank started looking
    verdict = judge_stall(beats, {1: 12.0}, world_size=2, me=0, limit=10.0, where="/x/heartbeats")
    assert verdict.ranks == [1] and any("no heartbeat from it in /x/heartbeats" in d for d in verdict.details)
    # not heard from for less than the limit: it may be the rank behind, so nobody is blamed yet (not rank 0)
    assert judge_stall(beats, {1: 9.0}, world_size=2, me=0, limit=10.0) is None
    # a rank that finished training (or failed) stops writing heartbeats on purpose: not "frozen"
    beats = {0: _hb("after_step", 5, age=30.0), 1: _hb("finishing", 5, age=0.0)}
    assert judge_stall(beats, {1: 100.0}, world_size=2, me=0, limit=10.0) is None


# ------------------------------------------------------------------------------ DDP: stalled rank
class _FreezeAt(HookBase):
    """Rank ``rank`` stops its own process (SIGSTOP) after iteration ``it``."""

    def __init__(self, rank: int, it: int):
        self.rank, self.it = rank, it

    def after_step(self):
        if comm.get_rank() == self.rank and self.trainer.iter == self.it:
            os.kill(os.getpid(), signal.SIGSTOP)


def _stall_main(out_dir: str, watchdog: float) -> None:
    setup_logger(out_dir, distributed_rank=comm.get_rank(), name="partcatseg")
    seed_all_rng(0)
    cfg = make_cfg(out_dir, **{"SOLVER.MAX_ITER": 100000, "SOLVER.CHECKPOINT_PERIOD": 3,
                               "SOLVER.WATCHDOG_SECONDS": watchdog})
    trainer = Trainer.from_config(cfg, ToyModel(), ToyData(comm.get_rank()))
    trainer.register_hooks([_FreezeAt(1, 4)])
    trainer.train()


def test_ddp_rank_stopped_by_sigstop_is_named_and_the_job_ends(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    with pytest.raises(WorkerStalledError) as info:
        launch(_stall_main, num_gpus_per_machine=2, dist_url="auto", args=(str(out), 3.0), backend="gloo")
    elapsed = time.monotonic() - t0
    message = str(info.value)
    assert message.startswith("rank 1 made no progress for "), message
    # it froze in the hooks of iteration 4 (the checkpoint of iteration 2 is the last one written)
    assert "(last iteration 3); stopping all ranks; last checkpoint: " in message
    assert message.endswith(str(out / "model_0000002.pth")), message
    assert info.value.exit_code == STALL_EXIT_CODE
    assert elapsed < 60, elapsed
    pids = _heartbeat_pids(out)
    assert sorted(pids) == [0, 1]
    assert not any(_alive(pid) for pid in pids.values()), pids  # the stopped rank was killed, nothing left over
    ckpt = torch.load(out / "model_0000002.pth", weights_only=True)  # what was written stays valid
    assert ckpt["iteration"] == 2
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    log = (out / "log.txt").read_text()
    assert "rank 1 (pid" in log and "heartbeat silent for" in log


def _timeout_main(out_dir: str) -> None:
    setup_logger(out_dir, distributed_rank=comm.get_rank(), name="partcatseg")
    cfg = make_cfg(out_dir, **{"SOLVER.MAX_ITER": 100000, "SOLVER.CHECKPOINT_PERIOD": 100000,
                               "SOLVER.WATCHDOG_SECONDS": 0})
    trainer = Trainer.from_config(cfg, ToyModel(), ToyData(comm.get_rank()))
    assert comm.get_collective_timeout() == timedelta(seconds=4)
    trainer.register_hooks([_FreezeAt(1, 2)])
    trainer.train()


def test_collective_timeout_ends_a_job_whose_rank_is_stopped(tmp_path):
    from torch.multiprocessing.spawn import ProcessRaisedException

    t0 = time.monotonic()
    with pytest.raises(ProcessRaisedException) as info:
        launch(_timeout_main, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path / "run"),),
               backend="gloo", timeout=4)
    elapsed = time.monotonic() - t0
    text = str(info.value)
    assert "CollectiveTimeoutError" in text and "timeout (4 s, --dist-timeout / DIST_TIMEOUT)" in text, text[-2000:]
    assert elapsed < 60, elapsed
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "rank 0 waited longer than the collective timeout (4 s" in log


def test_as_timeout_validates():
    assert as_timeout(None) == timedelta(minutes=30)
    assert as_timeout("2.5") == timedelta(seconds=2.5)
    for bad in (0, -1, "x", float("inf")):
        with pytest.raises(ValueError, match="--dist-timeout"):
            as_timeout(bad, "--dist-timeout")


# ------------------------------------------------------------------------------ single process
def test_hung_data_loader_in_a_single_process_is_stopped(tmp_path):
    script = tmp_path / "hang.py"
    out = tmp_path / "out"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {TESTS_DIR!r})
        from test_engine import ToyData, ToyModel, make_cfg
        from partcatseg.engine import Trainer, setup_logger

        class HangingData(ToyData):
            def __iter__(self):
                for batch in super().__iter__():
                    if self.position == 5:
                        time.sleep(100000)   # e.g. a read from a dead network file system
                    yield batch

        out = {str(out)!r}
        setup_logger(out, name="partcatseg")
        cfg = make_cfg(out, **{{"SOLVER.MAX_ITER": 1000, "SOLVER.CHECKPOINT_PERIOD": 2,
                               "SOLVER.WATCHDOG_SECONDS": 2}})
        Trainer.from_config(cfg, ToyModel(), HangingData(1)).train()
    """))
    t0 = time.monotonic()
    proc = subprocess.run([PY, str(script)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == STALL_EXIT_CODE, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rank 0 made no progress for ") and "(last iteration 3)" in last, last
    assert last.endswith("last checkpoint: " + str(out / "model_0000003.pth")), last
    assert elapsed < 60, elapsed
    hb = json.loads((out / "heartbeats" / "rank0.json").read_text())
    assert hb["phase"] == "data" and hb["iteration"] == 4 and hb["last_completed"] == 3


def test_watchdog_off_and_invalid_values(tmp_path):
    trainer = Trainer.from_config(make_cfg(tmp_path, **{"SOLVER.WATCHDOG_SECONDS": 0}), ToyModel(), ToyData(1))
    assert not any(isinstance(h, ProgressWatchdog) for h in trainer._hooks)
    trainer = Trainer.from_config(make_cfg(tmp_path), ToyModel(), ToyData(1))
    dog = [h for h in trainer._hooks if isinstance(h, ProgressWatchdog)]
    assert len(dog) == 1 and dog[0].limit == 600 and dog[0].heartbeat_dir == str(tmp_path / "heartbeats")
    with pytest.raises(ValueError, match="SOLVER.WATCHDOG_SECONDS"):
        Trainer.from_config(make_cfg(tmp_path, **{"SOLVER.WATCHDOG_SECONDS": -1}), ToyModel(), ToyData(1))


def test_watchdog_is_quiet_in_a_healthy_run_and_records_progress(tmp_path):
    stalls = []
    cfg = make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 30, "SOLVER.WATCHDOG_SECONDS": 0})
    trainer = Trainer.from_config(cfg, ToyModel(sleep=0.02), ToyData(1))
    trainer.register_hooks([ProgressWatchdog(1.0, str(tmp_path / "hb"), interval=0.05, on_stall=stalls.append)])
    trainer.train()
    assert stalls == []
    hb = json.loads((tmp_path / "hb" / "rank0.json").read_text())
    assert hb["phase"] == "finishing" and hb["last_completed"] == 29 and hb["tick"] > 3


# ------------------------------------------------------------------------------ weights check
class _LrAt(HookBase):
    """Sets the learning rate of iteration ``it`` to ``lr`` (the scheduler restores it afterwards)."""

    def __init__(self, it: int, lr: float):
        self.it, self.lr = it, lr

    def before_step(self):
        if self.trainer.iter == self.it:
            for g in self.trainer.optimizer.param_groups:
                g["lr"] = self.lr


class LinearLossModel(nn.Module):
    """loss = 4 * sum(b) (+ 0 * sum(a)): every step moves b by -4 * lr, a never moves; finite loss and gradients."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.b = nn.Parameter(torch.zeros(2))

    def forward(self, batch):
        return {"loss": 4.0 * self.b.sum() + 0.0 * self.a.sum() + 0.0 * batch["image"].mean()}


def _weights_cfg(out, **extra):
    opts = {"SOLVER.OPTIMIZER": "SGD", "SOLVER.MAX_ITER": 10, "SOLVER.CHECKPOINT_PERIOD": 2,
            "SOLVER.CLIP_GRADIENTS.ENABLED": False, "SOLVER.WATCHDOG_SECONDS": 0}
    opts.update(extra)
    return make_cfg(out, **opts)


def test_overflowing_weights_stop_before_saving_and_keep_the_last_checkpoint(tmp_path):
    trainer = Trainer.from_config(_weights_cfg(tmp_path), LinearLossModel(), ToyData(3))
    trainer.register_hooks([_LrAt(5, 1e38)])  # loss and gradients finite; b - 1e38 * 4 overflows float32 to -inf
    with pytest.raises(FloatingPointError, match=r"weights became NaN or infinite after the optimizer step of "
                                                 r"iteration 5 \(rank\(s\) \[0\]\): first bad parameter "
                                                 r"'b' \(max \|value\| = inf\)\. Nothing was saved; "
                                                 r"last good checkpoint: .*model_0000003\.pth"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "model_0000005.pth").exists() and not (tmp_path / "model_final.pth").exists()
    ckpt = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert ckpt["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert torch.isinf(unwrap_model(trainer.model).b).all()  # in memory: broken; on disk: the last good weights


def test_huge_finite_weights_stop_at_the_bound_unless_it_is_off(tmp_path):
    trainer = Trainer.from_config(_weights_cfg(tmp_path / "bound"), LinearLossModel(), ToyData(3))
    trainer.register_hooks([_LrAt(5, 1e30)])  # b = -4e30: finite, absurd
    with pytest.raises(FloatingPointError, match=r"weights became larger than SOLVER.MAX_WEIGHT_ABS=1e\+08 after the "
                                                 r"optimizer step of iteration 5 .*first bad parameter"):
        trainer.train()
    assert (tmp_path / "bound" / "last_checkpoint").read_text() == "model_0000003.pth"
    # SOLVER.MAX_WEIGHT_ABS 0: only finiteness is checked, such weights are saved
    trainer = Trainer.from_config(_weights_cfg(tmp_path / "off", **{"SOLVER.MAX_ITER": 6, "SOLVER.MAX_WEIGHT_ABS": 0}),
                                  LinearLossModel(), ToyData(3))
    trainer.register_hooks([_LrAt(5, 1e30)])
    trainer.train()
    final = torch.load(tmp_path / "off" / "model_final.pth", weights_only=True)["model"]
    assert float(final["b"].abs().max()) > 1e30
    with pytest.raises(ValueError, match="SOLVER.MAX_WEIGHT_ABS must be >= 0"):
        Trainer.from_config(_weights_cfg(tmp_path, **{"SOLVER.MAX_WEIGHT_ABS": -1}), ToyModel(), ToyData(3))


def test_save_refuses_non_finite_weights(tmp_path):
    trainer = Trainer.from_config(_weights_cfg(tmp_path, **{"SOLVER.MAX_ITER": 2}), ToyModel(), ToyData(3))
    trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    before = (tmp_path / "model_final.pth").read_bytes()
    with torch.no_grad():
        unwrap_model(trainer.model).sem_seg_head.predictor.class_embed.weight[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"weights became NaN or infinite before saving model_0000099\.pth "
                                                 r".*'sem_seg_head\.predictor\.class_embed\.weight'"):
        trainer.save_checkpoint("model_0000099")
    assert not (tmp_path / "model_0000099.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert (tmp_path / "model_final.pth").read_bytes() == before


# ------------------------------------------------------------------------------ bad training records
class RecordMapper:
    """Training mapper over synthetic records: features from the record id plus per-sample noise;
    records marked ``broken`` raise BadRecordError like an unreadable image."""

    def __call__(self, record, rng):
        if record.get("broken"):
            raise BadRecordError(record["file_name"], "cannot decode image (synthetic truncation)")
        g = torch.Generator().manual_seed(record["id"])
        x = torch.randn(4, generator=g) + 0.1 * torch.tensor(rng.np.standard_normal(4), dtype=torch.float32)
        return {"x": x, "y": torch.tensor(float(record["id"] % 3)), "file_name": record["file_name"]}


class RecordModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        return {"loss_mse": ((self.lin(x).squeeze(1) - y) ** 2).mean()}


def _records(n, broken=()):
    return [{"id": i, "file_name": f"img_{i}.jpg", **({"broken": True} if i in broken else {})} for i in range(n)]


def _skip_run(out, records, *, max_iter=8, stop_at=None, resume=False, skip=True, max_bad=10):
    seed_all_rng(0)
    cfg = make_cfg(out, **{"SOLVER.MAX_ITER": max_iter, "SOLVER.CHECKPOINT_PERIOD": 3, "SOLVER.WATCHDOG_SECONDS": 0})
    trainer = Trainer.from_config(cfg, RecordModel(), None)
    if stop_at is not None:
        class Stop(HookBase):
            def after_step(self):
                if self.trainer.iter == stop_at:
                    self.trainer.request_stop("test stop")
        trainer.register_hooks([Stop()])
    trainer.resume_or_load(resume=resume)
    trainer.data_loader = build_train_loader(records, RecordMapper(), total_batch_size=2, seed=5,
                                             start_iter=trainer.start_iter, skip_bad_records=skip,
                                             max_bad_records=max_bad)
    trainer.train()
    return trainer


def test_bad_training_record_stops_by_name_without_skipping(tmp_path):
    with pytest.raises(BadRecordError, match=r"img_3\.jpg: cannot decode image \(synthetic truncation\) \(training "
                                             r"record #3, stream position \d+; train with --skip-bad-records"):
        _skip_run(tmp_path, _records(6, broken={3}), skip=False)


def test_bad_training_records_are_skipped_reported_and_resume_is_bit_exact(tmp_path, caplog):
    records = _records(6, broken={3})
    straight = _skip_run(tmp_path / "a", records)
    listed = json.loads((tmp_path / "a" / "skipped_train_records.json").read_text())
    # 8 iterations x 2 samples = 16 draws over 6 records: the broken one is met in every epoch
    assert [e["file_name"] for e in listed] == ["img_3.jpg"] * 3
    assert all(e["reason"] == "cannot decode image (synthetic truncation)" and e["rank"] == 0 for e in listed)
    iterations = [e["iteration"] for e in listed]
    assert iterations == sorted(iterations) and len(set(e["position"] for e in listed)) == 3
    assert "Skipped training record img_3.jpg (rank 0, iteration" in caplog.text
    final = torch.load(tmp_path / "a" / "model_final.pth", weights_only=True)
    assert final["trainer"]["skipped_records"] == listed

    # interrupted after iteration 3 (a checkpoint holding the first skip), then resumed
    _skip_run(tmp_path / "b", records, stop_at=3)
    first = json.loads((tmp_path / "b" / "skipped_train_records.json").read_text())
    assert first == [e for e in listed if e["iteration"] <= 3]
    resumed = _skip_run(tmp_path / "b", records, resume=True)
    assert resumed.start_iter == 4
    assert json.loads((tmp_path / "b" / "skipped_train_records.json").read_text()) == listed
    a, b = unwrap_model(straight.model).state_dict(), unwrap_model(resumed.model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_too_many_bad_training_records_stop_training(tmp_path):
    with pytest.raises(TooManyBadRecordsError, match=r"2 distinct training records could not be read, more than "
                                                     r"DATALOADER.MAX_BAD_RECORDS=1; stopping at iteration \d+ before "
                                                     r"its optimizer step .*skipped_train_records\.json"):
        _skip_run(tmp_path, _records(6, broken={1, 4}), max_bad=1)
    listed = json.loads((tmp_path / "skipped_train_records.json").read_text())
    assert {e["file_name"] for e in listed} == {"img_1.jpg", "img_4.jpg"}
    # -1: no limit
    _skip_run(tmp_path / "unlimited", _records(6, broken={1, 4}), max_bad=-1)
    assert (tmp_path / "unlimited" / "model_final.pth").is_file()


def _ddp_skip_main(out_dir: str) -> None:
    setup_logger(out_dir, distributed_rank=comm.get_rank(), name="partcatseg")
    _skip_run(out_dir, _records(6, broken={1, 4}), max_bad=1)


def test_ddp_ranks_agree_on_stopping_for_bad_records(tmp_path):
    from torch.multiprocessing.spawn import ProcessRaisedException

    with pytest.raises(ProcessRaisedException, match="DATALOADER.MAX_BAD_RECORDS=1"):
        launch(_ddp_skip_main, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path),), backend="gloo")
    listed = json.loads((tmp_path / "skipped_train_records.json").read_text())
    assert {e["file_name"] for e in listed} == {"img_1.jpg", "img_4.jpg"}
    stops = []
    for log in ("log.txt", "log.txt.rank1"):
        text = (tmp_path / log).read_text()
        line = [s for s in text.splitlines() if "distinct training records could not be read" in s][0]
        stops.append(line.split("stopping at iteration ")[1].split()[0])
    assert stops[0] == stops[1]  # the same iteration on both ranks


@pytest.mark.slow
def test_torchrun_gets_the_collective_timeout(tmp_path):
    """Under torchrun, launch(timeout=...) reaches init_process_group: a rank that is late by more fails."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from partcatseg.engine import comm, launch

        def main(out):
            r = comm.get_rank()
            if r == 1:
                time.sleep(15)
            t0 = time.monotonic()
            try:
                comm.synchronize()
                result = "synchronized"
            except comm.CollectiveTimeoutError as exc:
                result = f"{{time.monotonic() - t0:.1f}} {{exc}}"
            with open(os.path.join(out, f"rank{{r}}.txt"), "w") as f:
                f.write(f"{{comm.get_collective_timeout().total_seconds()}}|{{result}}")

        launch(main, 1, args=({str(tmp_path)!r},), timeout=4)
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    from test_engine import _free_port

    subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
                    str(script)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    timeout, result = (tmp_path / "rank0.txt").read_text().split("|", 1)
    assert float(timeout) == 4.0
    waited = float(result.split()[0])
    assert 3 < waited < 14, result  # gave up after the 4 s timeout, long before rank 1 arrived
    assert "barrier on rank 0 of 2 waited more than 4 s (--dist-timeout / DIST_TIMEOUT)" in result


def _user_error_on_rank1_main() -> None:
    from partcatseg.config import ConfigError

    comm.synchronize()
    if comm.get_rank() == 1:
        raise ConfigError("SOLVER.BASE_LR=-1.0: expected a non-negative number")
    comm.synchronize()  # rank 0 waits here until the launcher stops it


def _describe_config_errors(err: BaseException):
    from partcatseg.config import ConfigError

    return (2, f"tool: error: {err}") if isinstance(err, ConfigError) else None


def test_a_worker_user_error_ends_the_spawned_job_with_its_line_and_status():
    from partcatseg.engine.launch import WorkerFailedError
    from torch.multiprocessing.spawn import ProcessRaisedException

    with pytest.raises(WorkerFailedError) as info:
        launch(_user_error_on_rank1_main, num_gpus_per_machine=2, dist_url="auto", backend="gloo", timeout=30,
               grace_period=2, describe_error=_describe_config_errors)
    assert str(info.value) == "tool: error: SOLVER.BASE_LR=-1.0: expected a non-negative number"
    assert info.value.exit_code == 2 and not isinstance(info.value, WorkerStalledError)
    # without a describer (or for an error it does not know) the worker's traceback is kept
    with pytest.raises(ProcessRaisedException) as raw:
        launch(_user_error_on_rank1_main, num_gpus_per_machine=2, dist_url="auto", backend="gloo", timeout=30,
               grace_period=2)
    # (whichever worker the launcher saw fail first: rank 1's error, or rank 0's lost connection to it)
    assert "Traceback (most recent call last)" in str(raw.value)
