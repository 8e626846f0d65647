"""Portable weights (issue 14): checkpoint -> folder, from_pretrained (name, folder, checkpoint, hub cache), upload.

Every model family is converted from a checkpoint file with seeded ("rule-filled", tests/weights_rule.py)
weights, loaded back from the folder, and its outputs compared bit for bit with the original file's.
The hub is never contacted: repositories are read from a hub cache built in the test under a temporary
``HF_HOME`` with ``HF_HUB_OFFLINE=1``, and the upload is checked against a stand-in for ``HfApi`` (what
would be created and uploaded); the real upload cannot be tested offline.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY_OPTS
from weights_rule import rule_state_dict

from partcatseg.checkpoint import Checkpointer, load_safetensors
from partcatseg.config import setup_cfg
from partcatseg.inference import Predictor, from_pretrained
from partcatseg.inference import hub
from partcatseg.modeling import build_model
from partcatseg.vocab import Vocabulary, register_dataset_vocabulary

CVPR_TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.CLIP_ARCH", "tiny", "MODEL.CLIP_RESOLUTION", "96", "MODEL.TINY_CLIP.LAYERS", "9",
    "MODEL.PROMPT_ENSEMBLE_TYPE", "single", "MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION", "[6, 6]",
    "MODEL.SEM_SEG_HEAD.WINDOW_SIZES", "3", "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM", "64",
    "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_PROJ_DIM", "32", "MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_DIM", "64",
    "MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_PROJ_DIM", "32", "MODEL.SEM_SEG_HEAD.DECODER_DIMS", "[32, 16]",
    "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_PROJ_DIMS", "[8, 8]", "MODEL.SEM_SEG_HEAD.HIDDEN_DIMS", "32",
]

# family -> (config file, overrides); every one a reduced-width model built from the same code
FAMILIES = {
    "PartCATSeg": ("configs/zero_shot/partcatseg_voc.yaml", TINY_OPTS),
    "CATSegBaseline": ("configs/toy/catseg_toy.yaml", ["MODEL.DEVICE", "cpu"]),
    "CATSeg": ("configs/catseg/vitb_384.yaml", CVPR_TINY),
    "PartCLIPSeg": ("configs/toy/partclipseg_toy.yaml", ["MODEL.DEVICE", "cpu"]),
}


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _outputs(model, records):
    with torch.no_grad():
        return model([dict(r) for r in records])


def _make_checkpoint(tmp: Path, family: str, extra=()):
    """A seeded checkpoint file of ``family`` and the config/overrides it belongs to."""
    config, opts = FAMILIES[family]
    opts = list(opts) + ["MODEL.TEXT_CACHE_DIR", str(tmp / "text_cache")] + list(extra)
    cfg = setup_cfg(str(REPO / config), opts)
    model = build_model(cfg)
    assert type(model).__name__ == family
    path = tmp / f"{family}.pth"
    torch.save({"model": rule_state_dict(model), "iteration": 7}, path)
    return path, str(REPO / config), opts, cfg


@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_folder_gives_bit_identical_outputs(family, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = []
    if family == "CATSeg":  # a class list that exists only on the converting machine
        classes = tmp_path / "my_classes.json"
        classes.write_text(json.dumps(["cat", "dog, puppy", "grass", "motorbike"]))
        extra = ["MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(classes), "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", str(classes)]
    ckpt, config, opts, cfg = _make_checkpoint(tmp_path, family, extra)
    original = build_model(cfg)
    report = Checkpointer(original).load_weights(str(ckpt))
    assert not report.missing and not report.unexpected
    original.eval()

    from partcatseg.cli.convert_checkpoint import main

    argv = [str(ckpt), "--output", str(tmp_path / "folder"), "--config-file", config, *opts]
    assert main(argv) == 0
    folder = tmp_path / "folder"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.yaml", "model.safetensors", "vocabulary.json"]

    # every tensor, dtype included (PartCLIPSeg's int64 position_ids), bit for bit
    stored = load_safetensors(str(folder / "model.safetensors"))
    reference = original.state_dict()
    assert set(stored) == set(reference)
    for key, value in reference.items():
        assert stored[key].dtype == value.dtype and torch.equal(stored[key], value), key
    if family == "PartCLIPSeg":
        assert stored["partclipseg_model.clip.text_model.embeddings.position_ids"].dtype == torch.int64

    if family == "CATSeg":
        os.remove(extra[1])  # the loading machine does not have the class-list file
    loaded = from_pretrained(str(folder), device="cpu", opts=["MODEL.TEXT_CACHE_DIR", str(tmp_path / "text_cache2")])
    assert type(loaded).__name__ == family and not loaded.training
    assert loaded.vocabulary.classes == original.vocabulary.classes
    assert loaded.vocabulary.objects == original.vocabulary.objects
    assert loaded.train_vocabulary.classes == original.train_vocabulary.classes

    records = [{"image": _image(50, 70, 1), "height": 50, "width": 70}, {"image": _image(64, 48, 2)}]
    if original.task == "part":
        records.append({"image": _image(40, 40, 3), "height": 40, "width": 40, "object_class": 1})
    for a, b in zip(_outputs(original, records), _outputs(loaded, records)):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (family, key, (a[key] - b[key]).abs().max())

    card = (folder / "README.md").read_text()
    assert f"`{family}`" in card and "python tools/convert_checkpoint.py" in card and str(ckpt) in card
    vocab = json.loads((folder / "vocabulary.json").read_text())
    assert vocab["format"] == "partcatseg-vocabulary/1" and vocab["test"]["classes"] == list(original.vocabulary.classes)
    config_text = yaml.safe_load((folder / "config.yaml").read_text())
    assert config_text["MODEL"]["WEIGHTS"] == "model.safetensors" and config_text["MODEL"]["DEVICE"] == "auto"


def test_vocabularies_travel_with_the_folder(tmp_path):
    """A dataset only a plugin knows: the folder stores its classes and a fresh process loads them."""
    classes = ["teapot's spout", "teapot's lid", "teapot's handle", "kettle's spout", "kettle's base"]
    register_dataset_vocabulary("my_kitchen_train", Vocabulary(classes[:3], ["teapot", "kettle"]))
    register_dataset_vocabulary("my_kitchen_val", Vocabulary(classes, ["teapot", "kettle"]))
    config, opts = FAMILIES["PartCATSeg"]
    opts = list(opts) + ["DATASETS.TRAIN", "('my_kitchen_train',)", "DATASETS.TEST", "('my_kitchen_val',)",
                         "MODEL.TEXT_CACHE_DIR", str(tmp_path / "tc")]
    cfg = setup_cfg(str(REPO / config), opts)
    model = build_model(cfg)
    ckpt = tmp_path / "kitchen.pth"
    torch.save({"model": rule_state_dict(model)}, ckpt)
    result = hub.convert_checkpoint(str(ckpt), tmp_path / "kitchen", config_file=str(REPO / config), opts=opts)
    assert result.facts["meta_architecture"] == "PartCATSeg"
    assert "my_kitchen_val" in result.card.read_text() and "convert_checkpoint(" in result.card.read_text()
    code = (
        "import json, sys; from partcatseg.inference import from_pretrained; from partcatseg.vocab import dataset_vocabulary\n"
        f"m = from_pretrained({str(tmp_path / 'kitchen')!r}, device='cpu')\n"
        "print(json.dumps([m.vocabulary.classes, m.vocabulary.objects, m.train_vocabulary.classes]))\n"
        "try:\n    dataset_vocabulary('my_kitchen_val')\nexcept KeyError:\n    print('unregistered again')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    test_classes, objects, train_classes = json.loads(lines[-2])
    assert test_classes == classes and objects == ["teapot", "kettle"] and train_classes == classes[:3]
    assert lines[-1] == "unregistered again"  # the stored vocabularies served the build only


def test_results_next_to_a_trained_checkpoint_go_into_the_card(tmp_path):
    ckpt, config, opts, _ = _make_checkpoint(tmp_path, "PartCATSeg")
    run = tmp_path / "run"
    (run / "inference" / "voc_val").mkdir(parents=True)
    shutil.move(str(ckpt), run / "model_final.pth")
    results = {"num_records": 3,
               "oracle_obj": {"partcatseg": {"mIoU-base": 43.7, "mIoU-unbase": 19.59, "h-IoU": 27.05}},
               "pred_all": {"partcatseg": {"mIoU-base": 30.17, "mIoU-unbase": 7.46, "h-IoU": 11.97}}}
    (run / "inference" / "voc_val" / "part_seg_results.json").write_text(json.dumps(results))
    result = hub.convert_checkpoint(str(run / "model_final.pth"), tmp_path / "a", config_file=config, opts=opts)
    card = result.card.read_text()
    assert "| Oracle-Obj |  43.70 |    19.59 |   27.05 |" in card and "Pred-All" in card
    assert result.results_source.name == "part_seg_results.json"
    # train_net's own table wins when present; --results overrides both
    (run / "inference" / "results_table.txt").write_text("voc_val\nTABLE FROM TRAIN_NET\n")
    card = hub.convert_checkpoint(str(run / "model_final.pth"), tmp_path / "b", config_file=config, opts=opts).card.read_text()
    assert "TABLE FROM TRAIN_NET" in card
    given = tmp_path / "results.md"
    given.write_text("| metric | value |\n|---|---|\n| mIoU | 12.3 |\n")
    card = hub.convert_checkpoint(str(run / "model_final.pth"), tmp_path / "c", config_file=config, opts=opts,
                                  results=given).card.read_text()
    assert "| mIoU | 12.3 |" in card and "TABLE FROM TRAIN_NET" not in card


def test_training_output_checkpoint_finds_its_config_and_predictors_load_every_form(tmp_path, monkeypatch):
    """A training run's OUTPUT_DIR (config.yaml beside the checkpoint), a registry name, a folder, Predictor."""
    ckpt, config, opts, cfg = _make_checkpoint(tmp_path, "PartCATSeg")
    run = tmp_path / "run"
    run.mkdir()
    shutil.move(str(ckpt), run / "model_final.pth")
    (run / "config.yaml").write_text(cfg.dump())
    from_file = hub.load_pretrained(str(run / "model_final.pth"), device="cpu")
    assert from_file.source.kind == "checkpoint" and from_file.source.config_file == str(run / "config.yaml")
    image = _image(48, 64, 5).permute(1, 2, 0).numpy()

    from partcatseg.cli.convert_checkpoint import main

    assert main([str(run / "model_final.pth"), "--output", str(tmp_path / "folder")]) == 0  # no --config-file
    predictor = Predictor.from_pretrained(str(tmp_path / "folder"), objects="cat: head, tail; dog: leg")
    assert predictor.source.kind == "folder" and predictor.class_names == ["cat's head", "cat's tail", "dog's leg"]
    reference = Predictor(model=from_file.model, objects="cat: head, tail; dog: leg")
    a, b = predictor(image), reference(image)
    assert (a.labels == b.labels).all() and (a.scores == b.scores).all()

    # a registry short name: its file in the weights directory, its config from the registry
    from partcatseg import weights

    spec = weights.WeightSpec(name="tiny_test_release", filename="tiny_test.pth", source="huggingface",
                              repo_id="org/x", repo_file="x.pth", config=str(tmp_path / "tiny.yaml"), description="t")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    monkeypatch.setitem(weights.WEIGHTS, spec.name, spec)
    monkeypatch.setenv("PARTCATSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(weights.WeightsNotFoundError, match="download_weights.py tiny_test_release"):
        from_pretrained("tiny_test_release")
    (tmp_path / "weights").mkdir()
    shutil.copy(run / "model_final.pth", tmp_path / "weights" / "tiny_test.pth")
    released = Predictor.from_pretrained("tiny_test_release", device="cpu", objects="cat: head, tail; dog: leg")
    assert released.source.kind == "registry"
    assert (released(image).scores == b.scores).all()


def _hub_cache(root: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """``folder`` as a cached snapshot of ``repo_id``: huggingface_hub's cache layout (blobs, snapshots, refs)."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in folder.iterdir():
        import hashlib

        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_repository_from_an_offline_cache(tmp_path, monkeypatch):
    ckpt, config, opts, cfg = _make_checkpoint(tmp_path, "PartCATSeg")
    hub.convert_checkpoint(str(ckpt), tmp_path / "folder", config_file=config, opts=opts)
    home = tmp_path / "hf_home"
    snapshot = _hub_cache(home, "someone/partcatseg-tiny", tmp_path / "folder")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = hub.load_pretrained("someone/partcatseg-tiny", device="cpu")
    assert loaded.source.kind == "hub" and Path(loaded.source.folder).resolve() == snapshot.resolve()
    reference = from_pretrained(str(tmp_path / "folder"), device="cpu")
    records = [{"image": _image(40, 52, 9), "height": 40, "width": 52}]
    assert torch.equal(_outputs(loaded.model, records)[0]["sem_seg_all"], _outputs(reference, records)[0]["sem_seg_all"])
    # the same through a fresh process whose environment names the cache (huggingface_hub reads it at import)
    code = ("from partcatseg.inference import Predictor\n"
            "p = Predictor.from_pretrained('someone/partcatseg-tiny', device='cpu', objects='cat: ear')\n"
            "print(p.source.kind, p.class_names)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), HF_HOME=str(home), HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "hub [\"cat's ear\"]"
    # not cached, offline: a clear error, nothing downloaded
    with pytest.raises(hub.PretrainedNotFoundError, match="offline"):
        hub.load_pretrained("someone/not-cached")
    with pytest.raises(hub.PretrainedNotFoundError, match="not a pretrained folder, a checkpoint file"):
        hub.load_pretrained("no such thing")
    # online but the hub cannot be reached: the cache serves what it has, the rest is a one-line error
    from partcatseg import weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(weights, "_unreachable", lambda url, timeout=3.0: "cannot reach huggingface.co (test)")
    assert hub.load_pretrained("someone/partcatseg-tiny", device="cpu").source.kind == "hub"
    with pytest.raises(weights.WeightsDownloadError, match="cannot reach huggingface.co .test., and it is not in the local cache"):
        hub.load_pretrained("someone/not-cached")


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi`` at its boundary: records what would be created and uploaded."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
        FakeHfApi.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, allow_patterns=None, commit_message=None, revision=None):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.name in allow_patterns}
        FakeHfApi.calls.append(("upload_folder", repo_id, repo_type, sorted(allow_patterns), files, commit_message, revision))


def test_push_to_hub_converts_and_uploads_one_command(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from partcatseg.cli.push_to_hub import main

    ckpt, config, opts, cfg = _make_checkpoint(tmp_path, "PartCATSeg")
    run = tmp_path / "run"
    run.mkdir()
    shutil.move(str(ckpt), run / "model_final.pth")
    (run / "config.yaml").write_text(cfg.dump())
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    # offline: refused before any API object exists
    assert main([str(run / "model_final.pth"), "me/tiny-partcatseg"]) == 1
    assert "offline" in capsys.readouterr().err and FakeHfApi.calls == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert main([str(run / "model_final.pth"), "me/tiny-partcatseg", "--private", "--message", "first"]) == 0
    out = capsys.readouterr().out
    assert "uploaded" in out and "https://huggingface.co/me/tiny-partcatseg" in out
    (create, upload) = FakeHfApi.calls
    assert create == ("create_repo", "me/tiny-partcatseg", "model", True, True)
    name, repo_id, repo_type, patterns, files, message, revision = upload
    assert (repo_id, repo_type, message, revision) == ("me/tiny-partcatseg", "model", "first", None)
    assert sorted(files) == ["README.md", "config.yaml", "model.safetensors", "vocabulary.json"] == patterns
    assert b"# tiny-partcatseg" in files["README.md"] and b"python tools/push_to_hub.py" in files["README.md"]
    # an existing folder uploads as it is
    FakeHfApi.calls = []
    hub.convert_checkpoint(str(run / "model_final.pth"), tmp_path / "folder")
    assert main([str(tmp_path / "folder"), "me/other"]) == 0
    assert FakeHfApi.calls[1][4]["model.safetensors"] == (tmp_path / "folder" / "model.safetensors").read_bytes()
    assert main([str(tmp_path / "folder"), "not a repo id"]) == 2


def test_command_line_errors_are_one_line(tmp_path, capsys):
    from partcatseg.cli.convert_checkpoint import main

    ckpt, config, opts, _ = _make_checkpoint(tmp_path, "PartCATSeg")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    cases = [
        ([str(ckpt), "--output", str(tmp_path / "busy"), "--config-file", config], 2, "is not empty; pass --force"),
        (["partcatseg_nonexistent", "--output", str(tmp_path / "o")], 2, "no config for partcatseg_nonexistent"),
        ([str(tmp_path / "nothing.pth"), "--output", str(tmp_path / "o"), "--config-file", config], 2, "no such file"),
        ([str(ckpt), "--output", str(tmp_path / "o")], 2, "pass --config-file"),
        ([str(ckpt), "--output", str(tmp_path / "o"), "--config-file", config, "--results", str(tmp_path / "r.json"), *opts],
         2, "r.json"),
    ]
    for argv, status, message in cases:
        assert main(argv) == status, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) <= 3, err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.yaml").write_text("MODEL: {}\n")
    with pytest.raises(hub.PretrainedNotFoundError, match="not a pretrained folder"):
        from_pretrained(str(tmp_path / "junk"))


def test_tools_wrappers_run(tmp_path):
    for tool in ("convert_checkpoint", "push_to_hub"):
        proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), "--help"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout
