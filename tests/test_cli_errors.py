"""One error path for the command lines: user mistakes are one or two lines and an exit status."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_OPTS

from partcatseg.checkpoint import CheckpointError
from partcatseg.cli.errors import RUNTIME_EXIT, USAGE_EXIT, UsageError, run_cli
from partcatseg.config import ConfigError, setup_cfg
from partcatseg.data.datasets import dataset_root
from partcatseg.engine.preflight import check_datasets, check_device, check_weights, preflight
from partcatseg.weights import WeightsNotFoundError

TOY_CFG = str(REPO / "configs/toy/partcatseg_toy.yaml")


def test_run_cli_statuses_and_debug(capsys, monkeypatch):
    def bad_config(argv):
        raise ConfigError("SOLVER.BASE_LR=-1.0: expected a non-negative number")

    assert run_cli(bad_config, ["x"], "tool.py") == USAGE_EXIT
    err = capsys.readouterr().err
    assert err == "tool.py: error: SOLVER.BASE_LR=-1.0: expected a non-negative number\n"
    # something named on the command line / in the config that is not there: usage (2)
    assert run_cli(lambda argv: (_ for _ in ()).throw(FileNotFoundError(2, "No such file or directory", "/x/y.pth")),
                   [], "tool.py") == USAGE_EXIT
    assert capsys.readouterr().err == "tool.py: error: No such file or directory: /x/y.pth\n"
    # a failure while working: runtime (1)
    assert run_cli(lambda argv: (_ for _ in ()).throw(CheckpointError("checkpoint x.pth is truncated")), [], "t") == RUNTIME_EXIT
    assert capsys.readouterr().err == "t: error: checkpoint x.pth is truncated\n"
    assert run_cli(lambda argv: (_ for _ in ()).throw(UsageError("--max-side must be >= 0")), [], "t") == 2
    with pytest.raises(ConfigError):  # --debug (removed from argv) shows the traceback
        run_cli(bad_config, ["--debug"], "tool.py")
    monkeypatch.setenv("PARTCATSEG_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_cli(bad_config, [], "tool.py")
    monkeypatch.delenv("PARTCATSEG_DEBUG")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli(lambda argv: 1 / 0, [], "tool.py")
    seen = []
    assert run_cli(lambda argv: seen.append(argv), ["a", "--debug", "b"], "tool.py") == 0 and seen == [["a", "b"]]


def test_config_mistakes_name_the_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"SOLVER.BASE_LR=-1.0: expected a non-negative number"):
        setup_cfg(TOY_CFG, ["SOLVER.BASE_LR", "-1"])
    with pytest.raises(ConfigError, match=r"SOLVER.MAX_ITER=0: expected a positive number"):
        setup_cfg(TOY_CFG, ["SOLVER.MAX_ITER", "0"])
    dup = tmp_path / "dup.yaml"
    dup.write_text(f"_BASE_: {TOY_CFG}\nSOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: 10\n  BASE_LR: 0.2\n")
    with pytest.raises(ConfigError, match=r"line 5: key 'BASE_LR' is given twice in the same mapping with different "
                                          r"values \(0.1 on line 3, 0.2 here\)"):
        setup_cfg(str(dup))
    same = tmp_path / "same.yaml"  # the official base lists CHECKPOINT_PERIOD twice with one value: accepted
    same.write_text(f"_BASE_: {TOY_CFG}\nSOLVER:\n  MAX_ITER: 10\n  MAX_ITER: 10\n")
    assert setup_cfg(str(same)).SOLVER.MAX_ITER == 10


def test_preflight_checks_device_weights_and_datasets(tmp_path, monkeypatch):
    cfg = setup_cfg(TOY_CFG, ["MODEL.DEVICE", "cuda"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="MODEL.DEVICE='cuda' but CUDA is not available on this machine"):
            check_device(cfg)
    assert check_device(setup_cfg(TOY_CFG, ["MODEL.DEVICE", "cpu"]), num_processes=2) == "cpu"
    assert check_weights("") == ""
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        check_weights(str(tmp_path / "nope.pth"))
    truncated = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"model.pth is truncated"):
        check_weights(str(truncated))
    with pytest.raises(ConfigError, match="dataset 'my_missing_set' is not registered"):
        check_datasets(["my_missing_set"], "DATASETS.TEST")
    with dataset_root(str(tmp_path)):  # nothing prepared here: the download command, not collect_mask_labels
        from partcatseg.data.datasets.common import DatasetFilesError

        with pytest.raises(DatasetFilesError) as err:
            check_datasets(["voc_obj_part_sem_seg_val_obj_condition"], "DATASETS.TEST")
        assert "PascalPart116/images/val' does not exist" in err.value.summary
        assert "tar -xzf PascalPart116.tar.gz" in err.value.fix and "collect_mask_labels" not in err.value.fix
        with pytest.raises(DatasetFilesError):
            preflight(setup_cfg(TOY_CFG, ["MODEL.DEVICE", "cpu"]), eval_only=True)


def _tool(args, env_extra=None, timeout=300):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO), env=env)


def test_benchmark_cli_config_typo_is_one_line():
    proc = _tool([str(REPO / "tools/benchmark.py"), "--config-file", TOY_CFG, "SOLVER.BASE_LRR", "0.1"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("benchmark.py: error: ") and "SOLVER.BASE_LRR" in lines[0]
    assert "Traceback" not in proc.stderr


def test_download_list_and_quiet_offline_failure(tmp_path):
    env = {"PARTCATSEG_WEIGHTS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "", "PARTCATSEG_OFFLINE": ""}
    listing = _tool([str(REPO / "tools/download_weights.py"), "--list"], env)
    assert listing.returncode == 0 and "usage" not in listing.stdout.lower() and "catseg_base" in listing.stdout
    start = time.monotonic()
    proc = _tool([str(REPO / "tools/download_weights.py"), "catseg_base"], env, timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 1
    # no network here: one probe, no retries, and the by-hand instructions without re-suggesting the tool
    assert took < 20 and "Retry" not in proc.stderr + proc.stdout
    assert "Fetch it by hand" in proc.stderr and "URL:" in proc.stderr
    assert "python tools/download_weights.py catseg_base" not in proc.stderr


def _train_net(args, env_extra=None):
    return _tool([str(REPO / "train_net.py"), *args], env_extra, timeout=300)


def test_train_net_user_mistakes_are_one_line_before_any_model(tmp_path):
    base = ["--config-file", TOY_CFG, "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]
    cases = [
        (["SOLVER.BASE_LRR", "0.1"], "SOLVER.BASE_LRR"),                        # a typo in a key
        (["SOLVER.BASE_LR", "-1"], "SOLVER.BASE_LR=-1.0: expected a non-negative number"),
        (["MODEL.WEIGHTS", str(tmp_path / "missing.pth")], "missing.pth"),    # weights file absent
        (["--config-file", str(tmp_path / "nope.yaml")], "nope.yaml"),        # config file absent
    ]
    for extra, needle in cases:
        args = [a for a in base if a not in ("--config-file", TOY_CFG)] if extra[0] == "--config-file" else base
        proc = _train_net(extra + args if extra[0] == "--config-file" else args + extra,
                          {"DETECTRON2_DATASETS": str(tmp_path / "no_data")})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (extra, proc.stderr[-2000:])
        assert len(lines) <= 2 and lines[0].startswith("train_net.py: error: ") and needle in proc.stderr, (extra, lines)
        assert "Traceback" not in proc.stderr
        assert "built PartCATSeg" not in proc.stderr + proc.stdout  # nothing was built
    # a dataset that is not there: the download / preparation command, not collect_mask_labels
    proc = _train_net(base, {"DETECTRON2_DATASETS": str(tmp_path / "no_data")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-2:]
    assert "ToyPart/images/train' does not exist" in last[0] and "make_toy_dataset.py" in last[1]
    # --debug shows the traceback
    proc = _train_net(base + ["SOLVER.BASE_LR", "-1", "--debug"], {"DETECTRON2_DATASETS": str(tmp_path)})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
