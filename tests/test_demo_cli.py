"""End-to-end runs of the demo CLI on real photographs shipped with scikit-image (cat, motorcycle).

The model is the tiny PartCATSeg with a rule-filled checkpoint written to a file and passed as
``MODEL.WEIGHTS`` (or by a registry short name), exactly as a user passes a downloaded checkpoint.
Its predictions are noise; the tests check the files, sizes, vocabularies, JSON/PNG agreement and
error messages.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_OPTS
from weights_rule import rule_state_dict

from partcatseg.cli.demo import DemoError, _resolve_vocabulary, build_parser, main, split_opts

skimage_data = pytest.importorskip("skimage.data")
SK_DATA = Path(skimage_data.__file__).parent
CAT = SK_DATA / "chelsea.png"
MOTORCYCLE = SK_DATA / "motorcycle_left.png"
CONFIG = str(REPO / "configs/zero_shot/partcatseg_voc.yaml")


def tiny_opts(tmp: Path, weights: str) -> list[str]:
    opts = [o for o in TINY_OPTS]
    i = opts.index("MODEL.WEIGHTS")
    opts[i + 1] = weights
    return opts + ["MODEL.TEXT_CACHE_DIR", str(tmp / "text_cache")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from partcatseg.config import setup_cfg
    from partcatseg.modeling import build_model

    model = build_model(setup_cfg(CONFIG, TINY_OPTS))
    path = tmp_path_factory.mktemp("ckpt") / "rule.pth"
    torch.save({"model": rule_state_dict(model)}, path)
    return path


def read_outputs(out: Path, stem: str):
    summary = json.loads((out / f"{stem}.json").read_text())
    overlay = Image.open(out / f"{stem}_overlay.png")
    labels = np.array(Image.open(out / f"{stem}_labels.png"))
    return summary, overlay, labels


def test_custom_objects_on_two_photographs(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    objects = "cat: head, whisker, paw, tail; motorbike: wheel, exhaust pipe; teapot: spout"
    vocabulary = ["cat's head", "cat's whisker", "cat's paw", "cat's tail", "motorbike's wheel",
                  "motorbike's exhaust pipe", "teapot's spout"]
    argv = ["--config-file", CONFIG, "--input", str(CAT), str(MOTORCYCLE), "--output", str(out),
            "--objects", objects, "--batch-size", "2", "--quiet"] + tiny_opts(tmp_path, str(checkpoint))
    assert main(argv) == 0
    assert "wrote 6 files for 2 image(s)" in capsys.readouterr().out
    for path, stem in ((CAT, "chelsea"), (MOTORCYCLE, "motorcycle_left")):
        summary, overlay, labels = read_outputs(out, stem)
        size = Image.open(path).size
        assert overlay.mode == "RGB"
        if summary["legend_placement"] == "inside":
            assert overlay.size == size
        else:  # the legend beside the picture: the canvas grew to the right or below
            assert summary["legend_placement"] in ("right", "below")
            grown = 1 if summary["legend_placement"] == "below" else 0  # PIL sizes are (width, height)
            assert overlay.size[grown] > size[grown] and overlay.size[1 - grown] >= size[1 - grown]
        assert labels.shape == (size[1], size[0]) and labels.dtype == np.uint8
        assert summary["vocabulary_classes"] == vocabulary
        names = [c["name"] for c in summary["classes"]]
        assert names and set(names) <= set(vocabulary)
        assert sorted(summary["legend"]) == sorted(names) and summary["legend_complete"]
        # the label PNG and the JSON agree pixel for pixel
        counts = np.bincount(labels.ravel(), minlength=256)
        assert {c["name"]: c["pixels"] for c in summary["classes"]} == {
            vocabulary[i]: int(counts[i]) for i in range(len(vocabulary)) if counts[i]
        }
        assert int(counts[255]) == summary["unlabeled_pixels"]
        assert set(np.unique(labels)) <= set(range(len(vocabulary))) | {255}
        assert all(0.0 <= c["mean_score"] <= 1.0 for c in summary["classes"])
        assert (summary["height"], summary["width"]) == (size[1], size[0])


def test_short_weights_name_dataset_vocabulary_object_and_mask(checkpoint, tmp_path, monkeypatch):
    """No --config-file (inferred from MODEL.WEIGHTS partcatseg_voc), inputs as a glob and a directory."""
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(checkpoint, weights / "partcatseg_voc.pth")
    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(weights))
    images = tmp_path / "photos"
    images.mkdir()
    shutil.copy(CAT, images / "cat.png")
    Image.open(CAT).convert("RGB").save(images / "cat_copy.jpg")
    mask = np.zeros(Image.open(CAT).size[::-1], np.uint8)
    mask[50:250, 100:350] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    argv = ["--input", str(images / "*.png"), str(images), "--output", str(out),
            "--vocabulary", "pascal_part_116", "--object", "cat", "--object-mask", str(tmp_path / "mask.png"),
            "--quiet"] + tiny_opts(tmp_path, "partcatseg_voc")
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["cat.json", "cat_copy.json"]
    summary, overlay, labels = read_outputs(out, "cat")
    assert overlay.size == Image.open(CAT).size
    assert summary["weights"] == "partcatseg_voc"
    assert summary["config"] == str(REPO / "configs/zero_shot/partcatseg_voc.yaml")
    assert summary["object"] == "cat" and summary["vocabulary"] == "pascal_part_116"
    assert summary["num_vocabulary_classes"] == 116
    assert summary["classes"] and all(c["name"].startswith("cat's ") for c in summary["classes"])
    assert set(summary["legend"]) == {c["name"] for c in summary["classes"]}
    assert np.all(labels[mask == 0] == 255) and np.all(labels[mask > 0] != 255)
    assert summary["unlabeled_pixels"] == int((mask == 0).sum())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--objects", "cat head, ear"], "objects: Entry 'cat head, ear' has no ':'"),
        (["--objects", "cat: head,, ear"], "empty part name"),
        (["--objects", "cat: ; dog: ear"], "Object 'cat' has no parts"),
        (["--vocabulary", "pascal_part_11"], "Unknown part vocabulary 'pascal_part_11'"),
        (["--vocabulary", "ade150"], "that is a semantic vocabulary"),
        (["--objects", "cat: head", "--object", "lion"], "--object 'lion' is not an object of the vocabulary; objects: ['cat']"),
        (["--classes", "cat, dog"], "--classes is for semantic models (CAT-Seg)"),
        (["--vocabulary", "pascal_part_116", "--objects", "cat: head"], "not vocabulary and objects"),
    ],
)
def test_bad_vocabularies_give_clear_errors(extra, message, tmp_path, capsys):
    argv = ["--config-file", CONFIG, "--input", str(CAT), "--output", str(tmp_path / "out")] + extra + TINY_OPTS
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("partcatseg-demo: error: ") and message in err
    assert not (tmp_path / "out").exists()  # nothing is written (the model is not even built)


def test_missing_named_weights_say_how_to_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(tmp_path / "empty"))
    argv = ["--input", str(CAT), "--output", str(tmp_path / "out")] + tiny_opts(tmp_path, "partcatseg_voc")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "python tools/download_weights.py partcatseg_voc" in err
    assert str(tmp_path / "empty" / "partcatseg_voc.pth") in err
    assert "https://drive.google.com/uc?id=1JUJjJQLMKE96H5SLNs4EMm4jiU6fPgRb" in err
    assert not (tmp_path / "out").exists()


def test_semantic_vocabulary_options():
    def parse(*extra):
        return build_parser().parse_args(["--input", "x", "--output", "y", *extra])

    assert _resolve_vocabulary(parse("--classes", "cat, dog|puppy"), "semantic").classes == ["cat", "dog, puppy"]
    ade = _resolve_vocabulary(parse("--vocabulary", "ade150"), "semantic")
    assert ade.name == "ade150" and len(ade) == 150 and not ade.has_parts
    assert _resolve_vocabulary(parse(), "semantic") is None
    with pytest.raises(DemoError, match="--objects needs a part model"):
        _resolve_vocabulary(parse("--objects", "cat: head"), "semantic")
    with pytest.raises(DemoError, match="--object needs a part model"):
        _resolve_vocabulary(parse("--object", "cat"), "semantic")


def test_split_opts():
    assert split_opts(["--input", "a.jpg", "b.jpg", "MODEL.WEIGHTS", "x.pth", "MODEL.DEVICE", "cpu"]) == (
        ["--input", "a.jpg", "b.jpg"], ["MODEL.WEIGHTS", "x.pth", "MODEL.DEVICE", "cpu"])
    assert split_opts(["--input", "a.jpg", "--opts", "A.B", "1"]) == (["--input", "a.jpg"], ["A.B", "1"])
    # overrides placed before the options (a common slip) are still overrides
    assert split_opts(["MODEL.WEIGHTS", "x.pth", "--input", "a.jpg", "--output", "o", "MODEL.DEVICE", "cpu"]) == (
        ["--input", "a.jpg", "--output", "o"], ["MODEL.WEIGHTS", "x.pth", "MODEL.DEVICE", "cpu"])


def test_parse_with_overrides_shared_by_every_command():
    """One parser rule for demo, app, convert and push: overrides anywhere; a key without a value is a usage error."""
    from partcatseg.cli import app, convert_checkpoint, push_to_hub
    from partcatseg.cli.errors import UsageError
    from partcatseg.cli.overrides import parse_with_overrides

    args, opts = parse_with_overrides(build_parser(), ["MODEL.DEVICE", "cpu", "--input", "a.jpg", "--output", "o"])
    assert args.input == ["a.jpg"] and args.output == "o" and opts == ["MODEL.DEVICE", "cpu"]
    for module in (app, convert_checkpoint, push_to_hub):
        assert "parse_with_overrides" in vars(module)
    with pytest.raises(UsageError, match=r"KEY VALUE pairs; got \['MODEL.WEIGHTS'\]"):
        parse_with_overrides(build_parser(), ["--input", "a.jpg", "--output", "o", "MODEL.WEIGHTS"])


def test_tools_wrapper_and_console_script(tmp_path):
    """tools/demo.py and the installed ``partcatseg-demo`` script both reach ``main``."""
    helped = subprocess.run([sys.executable, str(REPO / "tools/demo.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--objects" in helped.stdout and "usage: partcatseg-demo" in helped.stdout
    assert '"partcatseg-demo=partcatseg.cli.demo:main"' in (REPO / "setup.py").read_text()
    script = Path(sys.executable).parent / "partcatseg-demo"
    if not script.is_file():
        script = Path(shutil.which("partcatseg-demo") or script)
    assert script.is_file(), "console script missing: run `pip install -e .` after setup.py changed"
    proc = subprocess.run(
        [str(script), "--config-file", CONFIG, "--input", str(tmp_path / "none.jpg"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"partcatseg-demo: error: Input not found: {tmp_path / 'none.jpg'}" in proc.stderr


# ------------------------------------------------------------------------------ robustness of the inputs
def small_cat(path: Path, size=(64, 64)) -> Path:
    Image.open(CAT).convert("RGB").resize(size, Image.BILINEAR).save(path)
    return path


def test_unreadable_inputs_are_skipped_and_reported(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    small_cat(photos / "a_cat.png")
    (photos / "b_corrupt.jpg").write_bytes(b"this is not an image at all")
    small_cat(tmp_path / "whole.jpg", (96, 64))
    (photos / "c_cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])
    small_cat(photos / "d_cat.png", (80, 48))
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", str(photos), "--output", str(out), "--objects", "cat: head, tail",
            "--batch-size", "2", "--quiet"] + tiny_opts(tmp_path, str(checkpoint))
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 6 files for 2 image(s)" in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning: skipping" in line]
    assert len(warnings) == 2
    assert warnings[0] == (f"partcatseg-demo: warning: skipping {photos / 'b_corrupt.jpg'}: "
                           f"cannot be read as an image (cannot identify image file)")
    # Pillow words a cut JPEG "Truncated File Read" or "image file is truncated (...)"
    assert warnings[1].startswith(f"partcatseg-demo: warning: skipping {photos / 'c_cut.jpg'}: cannot be read as an image (")
    assert "runcated" in warnings[1]
    assert f"skipped 2 of 4 image(s), listed with the reasons in {out / 'skipped.json'}" in captured.err
    assert "Traceback" not in captured.err
    report = json.loads((out / "skipped.json").read_text())
    assert report["num_inputs"] == 4 and report["num_skipped"] == 2
    assert [s["file"] for s in report["skipped"]] == [str(photos / "b_corrupt.jpg"), str(photos / "c_cut.jpg")]
    assert all(s["reason"].startswith("cannot be read as an image") for s in report["skipped"])
    assert sorted(p.name for p in out.glob("*.json")) == ["a_cat.json", "d_cat.json", "skipped.json"]
    # the small pictures get their legend beside the image: larger overlays, the picture unchanged in size
    for stem, size in (("a_cat", (64, 64)), ("d_cat", (80, 48))):
        summary, overlay, labels = read_outputs(out, stem)
        assert labels.shape == size[::-1] and summary["image"] == str(photos / f"{stem}.png")
        assert overlay.size[0] * overlay.size[1] > size[0] * size[1] and overlay.size[0] >= size[0]

    # only unreadable inputs: nothing processed, exit status 1; a stale skipped.json is replaced
    argv_bad = ["--config-file", CONFIG, "--input", str(photos / "b_corrupt.jpg"), str(photos / "c_cut.jpg"),
                "--output", str(out), "--quiet"] + tiny_opts(tmp_path, str(checkpoint))
    assert main(argv_bad) == 1
    err = capsys.readouterr().err
    assert f"partcatseg-demo: error: none of the 2 input image(s) could be processed (reasons above and in {out / 'skipped.json'})" in err
    assert json.loads((out / "skipped.json").read_text())["num_inputs"] == 2

    # --no-legend: exactly the input's size; a run without skips removes the old skipped.json
    argv_plain = ["--config-file", CONFIG, "--input", str(photos / "a_cat.png"), "--output", str(out),
                  "--objects", "cat: head, tail", "--no-legend", "--quiet"] + tiny_opts(tmp_path, str(checkpoint))
    assert main(argv_plain) == 0
    summary, overlay, _ = read_outputs(out, "a_cat")
    assert overlay.size == (64, 64) and summary["legend"] == []
    assert not (out / "skipped.json").exists()


def test_large_images_are_predicted_at_a_bounded_size(checkpoint, tmp_path, capsys, monkeypatch):
    import partcatseg.inference as inference

    seen = []
    build = inference.build_model_with_weights

    def spying_build(cfg):
        model = build(cfg)
        model.register_forward_pre_hook(
            lambda module, args: seen.extend((tuple(r["image"].shape[1:]), (r["height"], r["width"])) for r in args[0]))
        return model

    monkeypatch.setattr(inference, "build_model_with_weights", spying_build)
    big = tmp_path / "big.jpg"
    small_cat(big, (2100, 1400))
    assert build_parser().parse_args(["--input", "x", "--output", "y"]).max_side == 1024
    out = tmp_path / "out"
    common = ["--config-file", CONFIG, "--input", str(big), "--objects", "cat: head, tail", "--quiet"]
    assert main(common + ["--output", str(out)] + tiny_opts(tmp_path, str(checkpoint))) == 0
    assert seen == [((683, 1024), (683, 1024))]  # the model sees the reduced image
    err = capsys.readouterr().err
    assert err.count(f"partcatseg-demo: {big}: 2100x1400 px, predicting at 1024x683 (--max-side 1024;") == 1
    assert "warning" not in err
    summary, overlay, labels = read_outputs(out, "big")
    assert labels.shape == (1400, 2100) and overlay.size == (2100, 1400)
    assert summary["predicted_at"] == {"height": 683, "width": 1024}
    assert (summary["height"], summary["width"]) == (1400, 2100)

    seen.clear()
    full = tmp_path / "full"
    assert main(common + ["--output", str(full), "--max-side", "0", "--no-legend"] + tiny_opts(tmp_path, str(checkpoint))) == 0
    assert seen == [((1400, 2100), (1400, 2100))]
    err = capsys.readouterr().err
    assert err.count(f"partcatseg-demo: warning: {big} is 2100x1400 px and is predicted at full size") == 1
    assert "--max-side 1024 predicts with the longer side reduced to 1024 px" in err
    assert np.array(Image.open(full / "big_labels.png")).shape == (1400, 2100)


def test_object_mask_of_the_wrong_size_and_a_missing_device_give_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    cat = small_cat(tmp_path / "cat.png")
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(tmp_path / "mask.png")
    base = ["--config-file", CONFIG, "--input", str(cat), "--output", str(tmp_path / "out"), "--objects", "cat: head, tail",
            "--quiet"]
    opts = tiny_opts(tmp_path, str(checkpoint))
    assert main(base + ["--object-mask", str(tmp_path / "mask.png")] + opts) == 1
    err = capsys.readouterr().err
    assert f"partcatseg-demo: warning: skipping {cat}: the --object-mask is 12x10 px but the image is 64x64 px" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the reason, then "none could be processed"

    (tmp_path / "garbage.png").write_bytes(b"garbage")
    assert main(base + ["--object-mask", str(tmp_path / "garbage.png")] + opts) == 2
    err = capsys.readouterr().err
    assert err == (f"partcatseg-demo: error: --object-mask {tmp_path / 'garbage.png'}: cannot be read as an image "
                   f"(cannot identify image file)\n")
    assert len(err.strip().splitlines()) == 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(base + ["--device", "cuda"] + opts) == 2
    err = capsys.readouterr().err
    assert err.startswith("partcatseg-demo: error: --device cuda: CUDA is not available on this machine (")
    assert "use --device cpu or --device auto" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(base + ["--device", "cuda:3"] + opts) == 2
    assert "--device cuda:3: this machine has 1 CUDA device(s) (cuda:0 to cuda:0)" in capsys.readouterr().err
