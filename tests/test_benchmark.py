"""tools/benchmark.py: report schema on a 1-repeat tiny run, statistics, vocabularies, CLI. No timing asserts."""
from __future__ import annotations

import json
import os

import pytest
from conftest import REPO, TINY_OPTS

import partcatseg.cli.benchmark as benchmark_cli
from partcatseg.benchmark import (
    INFERENCE_VARIANT_OPTS,
    PHASES,
    SCHEMA,
    TRAIN_VARIANT_OPTS,
    BenchmarkSpec,
    format_table,
    peak_rss_mb,
    run_benchmark,
    summarize,
    synthetic_part_vocabulary,
)
from partcatseg.benchmark.official import AGGREGATOR_FILE, CLIP_FILE, OfficialPartCATSeg, load_official_modules
from partcatseg.cli.benchmark import main
from partcatseg.config import ConfigError

CONFIG = str(REPO / "configs/zero_shot/partcatseg_voc.yaml")
STATS_KEYS = {"median", "q1", "q3", "min", "max", "n", "samples"}
MEMORY_KEYS = {"rss_before_mb", "peak_rss_mb", "peak_increase_mb", "peak_is_section"}
# The official network files are third-party code that is never shipped: point this variable at a
# kaist-cvml/part-catseg checkout (or a directory holding the two files) to run the official phase.
OFFICIAL_ROOT = os.environ.get("PARTCATSEG_OFFICIAL_ROOT", "")
needs_official = pytest.mark.skipif(
    not (OFFICIAL_ROOT and all(os.path.isfile(os.path.join(OFFICIAL_ROOT, f)) for f in (AGGREGATOR_FILE, CLIP_FILE))),
    reason=f"PARTCATSEG_OFFICIAL_ROOT does not hold {AGGREGATOR_FILE} and {CLIP_FILE}",
)


def _spec(tmp_path, **kw) -> BenchmarkSpec:
    args = dict(config_file=CONFIG, opts=list(TINY_OPTS) + ["INPUT.CROP.SIZE", "(40, 40)"], batch_size=2,
                image_size=(48, 64), warmup=0,
                repeats=1, text_cache_dir=str(tmp_path / "text"))
    args.update(kw)
    return BenchmarkSpec(**args)


def _check_stats(stats: dict, n: int) -> None:
    assert set(stats) == STATS_KEYS
    assert stats["n"] == n == len(stats["samples"])
    assert 0 < stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]


def test_summarize_median_quartiles_and_spread():
    s = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert s["samples"] == [4.0, 1.0, 3.0, 2.0, 5.0]  # in measurement order
    one = summarize([0.5])
    assert one["median"] == one["q1"] == one["q3"] == 0.5
    with pytest.raises(ValueError, match="at least one sample"):
        summarize([])


def test_synthetic_vocabulary_sizes():
    v = synthetic_part_vocabulary(800)
    assert len(v.classes) == 800 and len(set(v.classes)) == 800
    assert len(v.object_classes) == 134  # ceil(800 / 6)
    assert len(v.part_classes) == 266  # a pool of 800 // 3 part names
    assert v.classes[0] == "object 0's part 0" and v.classes[7] == "object 1's part 4"
    with pytest.raises(ValueError, match="num_classes=0"):
        synthetic_part_vocabulary(0)


def test_tiny_run_report_schema(tmp_path):
    report = run_benchmark(_spec(tmp_path), PHASES, isolate=False)
    assert report["schema"] == SCHEMA
    assert report["config_file"] == CONFIG and report["device"] == "cpu" and report["batch_size"] == 2
    assert report["image_size"] == [48, 64] and report["repeats"] == 1 and report["isolated_phases"] is False
    assert report["model"] == {"meta_architecture": "PartCATSeg", "task": "part", "classes": 116, "objects": 20,
                               "generalized_parts": 42, "generalized_objects": 16, "stage1_classes": 59,
                               "stage2_classes": 117, "templates": 1, "class_chunk": 1024, "inference_amp": "fp32"}
    assert report["settings"] == {"class_chunk": 0, "amp": "", "channels_last": False, "compile": False}
    assert {"torch", "python", "threads", "cpu", "machine"} <= set(report["environment"])
    phases = report["phases"]
    assert list(phases) == list(PHASES)
    peaks = phases["matmul_peak"]["peaks"]
    assert set(peaks) == {"fp32", "bf16"} and all(p["gflops_best"] >= p["gflops_median"] > 0 for p in peaks.values())
    for name in ("build", "text_cold", "text_cached", "train_step"):
        _check_stats(phases[name]["seconds"], 1)
        assert MEMORY_KEYS <= set(phases[name])
        assert phases[name]["peak_rss_mb"] >= phases[name]["rss_before_mb"] > 0
    train = phases["train_step"]
    assert train["batch_size"] == 2 and train["accumulation_steps"] == 1 and train["image_size"] == [40, 40]
    assert train["compute_dtype"] == "fp32" and train["gflop_per_step"] > 0
    u = train["utilization"]
    assert u["gflops_per_second"] == pytest.approx(train["gflop_per_step"] / train["seconds"]["median"], rel=1e-9)
    assert u["fraction_of_peak"] == pytest.approx(u["gflops_per_second"] / peaks["fp32"]["gflops_best"], rel=1e-9)
    inference = phases["inference"]
    assert inference["compute_dtype"] == "fp32" and inference["gflop_per_image"] > 0
    assert MEMORY_KEYS <= set(inference)
    assert {"batch_1", "batch_2"} <= set(inference)
    for bs in (1, 2):
        b = inference[f"batch_{bs}"]
        _check_stats(b["seconds_per_batch"], 1)
        _check_stats(b["seconds_per_image"], 1)
        assert b["seconds_per_image"]["median"] == pytest.approx(b["seconds_per_batch"]["median"] / bs)
        assert b["images_per_second"] == pytest.approx(bs / b["seconds_per_batch"]["median"])
        assert b["first_call_seconds"] > 0
        assert b["utilization"]["gflops_per_second"] == pytest.approx(
            inference["gflop_per_image"] / b["seconds_per_image"]["median"], rel=1e-9)
        assert 0 < b["utilization"]["fraction_of_peak"] < 1
    json.dumps(report)  # serialisable
    table = format_table(report)
    for row in ("matmul peak fp32", "matmul peak bf16", "build", "text_cold", "text_cached", "inference batch 1",
                "inference batch 2", "train_step", "GFLOP/s fp32 (", "% of peak)"):
        assert row in table
    assert "classes=116" in table and "class_chunk=1024" in table


def test_cli_isolated_phase_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--config-file", CONFIG, "--repeats", "1", "--warmup", "0", "--image-size", "48", "64",
            "--phases", "inference", "--num-classes", "30", "--json", str(out), *TINY_OPTS]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["isolated_phases"] is True and list(report["phases"]) == ["inference"]
    assert report["model"]["classes"] == 30 and report["model"]["stage2_classes"] == 31
    # measured in a child process: its own peak, not this test process's
    assert report["phases"]["inference"]["peak_is_section"] in (True, False)
    assert "inference batch 2" in capsys.readouterr().out


@pytest.mark.parametrize("option, entry, expected", [
    ("--train-variants", "bf16+nosuch", f"{sorted(TRAIN_VARIANT_OPTS)} or accumulateN"),
    ("--inference-variants", "nosuch", f"{sorted(INFERENCE_VARIANT_OPTS)}"),
])
def test_cli_unknown_variant_is_one_usage_line_before_any_work(option, entry, expected, capsys, monkeypatch):
    # a typo in a variant list must not cost a model build (or, for a later variant, a whole run) first
    monkeypatch.setattr(benchmark_cli, "run_benchmark", lambda *a, **k: pytest.fail("benchmark ran"))
    assert main(["--config-file", CONFIG, "--phases", "inference", option, "default", entry]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"benchmark.py: error: {option}: unknown variant part 'nosuch' in {entry!r}; "
                   f"expected {expected}, joined with '+'\n")


def test_official_phase_needs_an_official_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="part_cat_seg_model.py"):
        load_official_modules(str(tmp_path))
    with pytest.raises(ValueError, match="--official-root"):
        run_benchmark(_spec(tmp_path), ["official"], isolate=False)


@needs_official
def test_official_phase_runs_the_official_code_with_parity(tmp_path):
    report = run_benchmark(_spec(tmp_path, official_root=OFFICIAL_ROOT), ["official"], isolate=False)
    assert list(report["phases"]) == ["official"]
    assert report["model"]["stage2_classes"] == 117
    res = report["phases"]["official"]
    assert set(res) == {"startup", "official_notes", "official", "ours", "speedup_median", "official_parity"}
    _check_stats(res["startup"]["seconds"], 1)
    assert MEMORY_KEYS <= set(res["startup"])
    breakdown = res["startup"]["breakdown_seconds"]
    assert set(breakdown) == {"clip_build", "text", "aggregator_and_load"} and min(breakdown.values()) >= 0
    assert sum(breakdown.values()) <= res["startup"]["seconds"]["median"]
    for key in ("official", "ours"):
        assert MEMORY_KEYS <= set(res[key])
        b = res[key]["batch_1"]
        _check_stats(b["seconds_per_image"], 1)
        assert b["images_per_second"] == pytest.approx(1 / b["seconds_per_image"]["median"])
    medians = {key: res[key]["batch_1"]["seconds_per_image"]["median"] for key in ("official", "ours")}
    assert res["speedup_median"] == pytest.approx(medians["official"] / medians["ours"])
    assert set(res["official_parity"]) == {"sem_seg", "sem_seg_all"}
    assert max(res["official_parity"].values()) < 1e-4
    # the tiny CLIP's 32-wide heads break build_model's width // 64 rule: the override must be reported
    assert any("heads" in n for n in res["official_notes"]) and any("fp32" in n for n in res["official_notes"])
    json.dumps(report)
    table = format_table(report)
    for row in ("official start-up", "official inference batch 1", "ours (interleaved) batch 1", "official / ours",
                "official: DINOv2"):
        assert row in table


@needs_official
def test_official_wrapper_text_costs_and_batch_rule(tmp_path):
    import torch

    from partcatseg.benchmark.phases import _build, _records

    spec = _spec(tmp_path)
    model = _build(spec)
    official = OfficialPartCATSeg(model, OFFICIAL_ROOT)
    templates = len(model.templates)
    for split, vocab in (("train", model.train_vocabulary), ("test", model.vocabulary)):
        part_obj, specific = official.text[split]
        assert part_obj.shape[:2] == (vocab.num_text_classes_stage1, templates)
        assert specific.shape[:2] == (vocab.num_text_classes_stage2, templates)
    ours = model.vocab_tensors(model.vocabulary)
    assert torch.allclose(official.text["test"][0], ours.text_part_obj, atol=1e-5)
    assert torch.allclose(official.text["test"][1], ours.text_specific, atol=1e-5)
    records = _records(model, spec, 2)
    out = official(records[:1])[0]
    assert set(out["costs"]) == {"part_obj_cost", "specific_part_cost", "part_obj_cost_emb", "specific_part_cost_emb"}
    assert all(v.device.type == "cpu" for v in out["costs"].values())
    assert out["sem_seg"].shape == (len(model.vocabulary), 48, 64)
    assert out["sem_seg_all"].shape == (len(model.vocabulary) + 1, 48, 64)
    with pytest.raises(ValueError, match="one image per call"):
        official(records)


def test_unknown_phase_and_missing_cuda_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown phase 'warp'"):
        run_benchmark(_spec(tmp_path), ["warp"], isolate=False)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
            run_benchmark(_spec(tmp_path, device="cuda"), ["build"], isolate=False)


def test_training_variants_run_the_trainer_with_their_options(tmp_path):
    spec = _spec(tmp_path, batch_size=1, train_variants=["default", "bf16+accumulate3"])
    report = run_benchmark(spec, ["train_step"], isolate=False)
    assert list(report["phases"]) == ["train_step", "train_step:bf16+accumulate3"]
    plain, acc = report["phases"]["train_step"], report["phases"]["train_step:bf16+accumulate3"]
    assert (plain["batch_size"], plain["accumulation_steps"], plain["compute_dtype"]) == (1, 1, "fp32")
    assert (acc["batch_size"], acc["micro_batch_size"], acc["accumulation_steps"]) == (3, 1, 3)
    assert acc["compute_dtype"] == "bf16" and acc["variant"] == "bf16+accumulate3"
    # one optimizer step of 3 micro-batches executes three micro-batches' forward and backward
    assert acc["gflop_per_step"] == pytest.approx(3 * plain["gflop_per_step"], rel=1e-6)
    assert "fraction_of_peak" not in plain["utilization"]  # no matmul_peak phase in this run: no ratio
    assert "3 img/step = 3 x 1, 40x40" in format_table(report)
    with pytest.raises(ValueError, match=r"unknown variant part 'fp8' in 'fp8\+accumulate2'"):
        run_benchmark(_spec(tmp_path, train_variants=["fp8+accumulate2"]), ["train_step"], isolate=False)


def test_peak_rss_is_positive():
    assert peak_rss_mb() > 10


def test_inference_variants_compare_with_the_peak_of_their_dtype(tmp_path):
    report = run_benchmark(_spec(tmp_path, inference_variants=["default", "bf16"]), ["matmul_peak", "inference"],
                           isolate=False)
    phases = report["phases"]
    assert list(phases) == ["matmul_peak", "inference", "inference:bf16"]
    peaks = phases["matmul_peak"]["peaks"]
    for key, dtype in (("inference", "fp32"), ("inference:bf16", "bf16")):
        res = phases[key]
        assert res["compute_dtype"] == dtype and res["variant"] == (key.partition(":")[2] or "default")
        u = res["batch_1"]["utilization"]
        assert u["compute_dtype"] == dtype
        assert u["fraction_of_peak"] == pytest.approx(u["gflops_per_second"] / peaks[dtype]["gflops_best"], rel=1e-9)
    # autocast changes the precision, not the work
    assert phases["inference:bf16"]["gflop_per_image"] == pytest.approx(phases["inference"]["gflop_per_image"], rel=1e-2)
    table = format_table(report)
    assert "inference:bf16 batch 1" in table and "GFLOP/s bf16 (" in table
    with pytest.raises(ValueError, match="unknown variant part 'int8'"):
        run_benchmark(_spec(tmp_path, inference_variants=["int8"]), ["inference"], isolate=False)
