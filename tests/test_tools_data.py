"""The data command-line tools (thin argparse wrappers): exit codes, outputs and error messages."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partcatseg.data.datasets import current_dataset_root, set_dataset_root
from test_datasets import GOLDFISH, _fake_partimagenet_raw, _png  # noqa: E402  (tests/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _restore_root():
    """check_dataset --root re-roots the process-wide catalog; put it back after each test."""
    previous = current_dataset_root()
    yield
    set_dataset_root(previous)


def test_make_toy_and_check_dataset_tools(tmp_path, capsys):
    make, check = _tool("make_toy_dataset"), _tool("check_dataset")
    out = tmp_path / "ToyPart"
    assert make.main(["--out", str(out), "--num-train", "2", "--num-val", "3", "--size", "40", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["height"], summary["width"], summary["val"]["images"]) == (40, 53, 3)
    assert make.main(["--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err

    assert check.main(["toy_obj_part_sem_seg_val", "toy_obj_part_sem_seg_train", "--root", str(tmp_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Dataset 'toy_obj_part_sem_seg_val': passed" in text and "| part label range" in text
    assert "Dataset 'toy_obj_part_sem_seg_train': passed" in text

    png = out / "annotations_detectron2_obj/val/val_000000.png"
    lab = np.asarray(Image.open(png)).copy()
    lab[0, 0] = 7  # 7 objects: ids 0..6
    Image.fromarray(lab).save(png)
    assert check.main(["toy_obj_part_sem_seg_val", "--root", str(tmp_path), "--quiet", "--max-records", "2"]) == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "object label range" in text and "values [7]" in text

    assert check.main(["no_such_set", "--quiet"]) == 1
    assert "not registered" in capsys.readouterr().out
    assert check.main(["--list"]) == 0
    assert "toy_obj_part_sem_seg_val_obj_condition" in capsys.readouterr().out.split()


def test_collect_mask_labels_tool(tmp_path, capsys):
    tool = _tool("collect_mask_labels")
    _png(tmp_path / "obj/x.png", np.array([[255, 2, 9]], np.uint8))
    assert tool.main([str(tmp_path / "obj"), str(tmp_path / "val_obj_label_count.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "val_obj_label_count.json").read_text()) == {"x.png": [2, 9]}
    assert tool.main([str(tmp_path / "missing"), str(tmp_path / "o.json")]) == 2
    assert "missing" in capsys.readouterr().err


def test_prepare_partimagenet_tool(tmp_path, capsys):
    tool = _tool("prepare_partimagenet")
    d = _fake_partimagenet_raw(tmp_path)
    assert tool.main(["--data-dir", str(d), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["images_removed"] == 2
    assert len(list((d / "images/train").iterdir())) == 3
    assert tool.main(["--data-dir", str(d)]) == 0
    assert [p.name for p in (d / "images/train").iterdir()] == [f"{GOLDFISH}_100.JPEG"]
    assert tool.main(["--data-dir", str(tmp_path / "nope")]) == 2
    assert "images" in capsys.readouterr().err


def test_prepare_catseg_datasets_tool(tmp_path, capsys):
    tool = _tool("prepare_catseg_datasets")
    _png(tmp_path / "ADEChallengeData2016/annotations/validation/a.png", np.array([[3]], np.uint8))
    assert tool.main(["ade150", "--root", str(tmp_path), "--quiet"]) == 0
    assert "ade150: wrote 1 label files" in capsys.readouterr().out
    assert tool.main(["voc", "--root", str(tmp_path), "--quiet"]) == 2
    assert "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt" in capsys.readouterr().err


def test_tool_runs_as_a_script(tmp_path):
    _png(tmp_path / "gt/y.png", np.array([[1, 255]], np.uint8))
    proc = subprocess.run([sys.executable, str(REPO / "tools/collect_mask_labels.py"), str(tmp_path / "gt"),
                           str(tmp_path / "c.json"), "--quiet"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "c.json").read_text()) == {"y.png": [1]}
