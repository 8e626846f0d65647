"""Benchmark options beyond the default phases: the accuracy phase and random text features."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA, REPO, TINY_OPTS

from partcatseg.benchmark import BenchmarkSpec, RandomTextFeatures, format_table, run_benchmark
from partcatseg.cli.benchmark import main

CONFIG = str(REPO / "configs/zero_shot/partcatseg_voc.yaml")


def _spec(tmp_path, **kw) -> BenchmarkSpec:
    args = dict(config_file=CONFIG, opts=list(TINY_OPTS), batch_size=1, image_size=(48, 64), warmup=0,
                repeats=1, text_cache_dir=str(tmp_path / "text"))
    args.update(kw)
    return BenchmarkSpec(**args)


def test_accuracy_phase_on_a_synthetic_record(tmp_path):
    report = run_benchmark(_spec(tmp_path), ["accuracy"], isolate=False)
    res = report["phases"]["accuracy"]
    assert res["source"] == {"weights": "random (seed 0)", "image_size": [48, 64]}
    modes = res["modes"]
    assert list(modes) == ["reference", "one_pass", "bf16", "fp16", "channels_last"]
    assert modes["one_pass"]["max_abs_diff"] <= 1e-5 and modes["channels_last"]["max_abs_diff"] <= 1e-5
    assert 0 < modes["bf16"]["max_abs_diff"] < 0.05
    table = format_table(report)
    assert "accuracy bf16" in table and "argmax agree" in table


def test_accuracy_phase_uses_the_fixture_config_and_image_with_given_weights(tmp_path, monkeypatch):
    """With --fixture the phase takes the fixture's options and record, and --weights (here the rule
    weights written by tests/weights_rule.py); the full-size fixture is the slow speed-mode test."""
    import partcatseg.benchmark.accuracy as acc
    from weights_rule import main as write_rule_weights
    from weights_rule import rule_tensor

    g = torch.Generator().manual_seed(0)
    fixture = tmp_path / "tiny_fixture.pt"
    bg = torch.randn(1, 64, generator=g)
    torch.save({"config": str(REPO / "configs/zero_shot/partcatseg_voc.yaml"), "opts": TINY_OPTS,
                "image": torch.randint(0, 256, (3, 40, 52), generator=g, dtype=torch.uint8),
                "height": 40, "width": 52, "gt_object_class": 7, "non_object_embedding": bg}, fixture)
    weights = tmp_path / "rule.pth"
    assert write_rule_weights([str(fixture), str(weights)]) == 0
    seen = {}
    real = acc.mode_deltas

    def spy(model, build, records, modes):
        seen["size"] = (records[0]["height"], records[0]["width"], records[0]["object_class"])
        seen["weight"] = model.aggregator.conv1.weight.detach().clone()
        seen["bg"] = model.sem_seg_head.predictor.non_object_embedding.detach().clone()
        variant = build(["TEST.CLASS_CHUNK", "3"])  # same weights, other settings
        seen["variant"] = (variant.aggregator.class_chunk, variant.aggregator.conv1.weight.detach().clone())
        return real(model, build, records, modes)

    monkeypatch.setattr(acc, "mode_deltas", spy)
    spec = _spec(tmp_path, opts=[], fixture=str(fixture), weights=str(weights), accuracy_modes=["one_pass"])
    report = run_benchmark(spec, ["accuracy"], isolate=False)
    res = report["phases"]["accuracy"]
    assert res["source"] == {"fixture": str(fixture), "weights": str(weights), "image_size": [40, 52]}
    assert list(res["modes"]) == ["reference", "one_pass"] and res["modes"]["one_pass"]["max_abs_diff"] <= 1e-5
    assert seen["size"] == (40, 52, 7)
    key = "sem_seg_head.predictor.transformer.conv1.weight"
    torch.testing.assert_close(seen["weight"], rule_tensor(key, seen["weight"].shape))
    assert torch.equal(seen["bg"], bg)
    assert seen["variant"][0] == 3 and torch.equal(seen["variant"][1], seen["weight"])


def test_missing_fixture_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="parity fixture not found: .*nope.pt"):
        run_benchmark(_spec(tmp_path, fixture=str(tmp_path / "nope.pt")), ["accuracy"], isolate=False)


def test_random_text_features_shape_and_determinism(tmp_path):
    from partcatseg.config import setup_cfg
    from partcatseg.modeling import build_model

    model = build_model(setup_cfg(CONFIG, TINY_OPTS + ["MODEL.TEXT_CACHE_DIR", str(tmp_path)]))
    rt = RandomTextFeatures(seed=3)
    a = rt.get(model.clip_model, ["x", "y", "z"], ["a {}", "b {}"])
    assert a.shape == (3, 2, model.clip_model.text_projection.shape[1])
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3, 2))
    assert torch.equal(a, RandomTextFeatures(seed=3).get(model.clip_model, ["p", "q", "r"], ["a {}", "b {}"]))


def test_random_text_scaling_run_and_its_guard(tmp_path):
    out = tmp_path / "scale.json"
    argv = ["--config-file", CONFIG, "--phases", "inference", "--random-text", "--num-classes", "300",
            "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--image-size", "48", "64",
            "--no-isolate", "--json", str(out), *TINY_OPTS]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["model"]["classes"] == 300 and report["model"]["stage2_classes"] == 301
    assert report["phases"]["inference"]["batch_1"]["images_per_second"] > 0
    with pytest.raises(ValueError, match="--random-text replaces text encoding"):
        run_benchmark(_spec(tmp_path, random_text=True), ["text_cold"], isolate=False)
