"""The benchmark's per-stage profile: the stage clock's accounting, and the ``stages`` phase on tiny models."""
from __future__ import annotations

import time

import pytest
import torch
from conftest import REPO, TINY_OPTS

from partcatseg.benchmark import BenchmarkSpec, format_table, run_benchmark
from partcatseg.benchmark.flops import count_flops
from partcatseg.benchmark.phases import _build, _records
from partcatseg.benchmark.stages import OTHER, profile_stages, stage_clock

PARTCATSEG = str(REPO / "configs/zero_shot/partcatseg_voc.yaml")
CATSEG = str(REPO / "configs/zero_shot/catseg_voc.yaml")


class Pipeline:
    """Two nested steps with known durations and FLOPs (two matmuls)."""

    def __init__(self) -> None:
        self.a = torch.ones(8, 8)

    def inner(self) -> torch.Tensor:
        time.sleep(0.05)
        return self.a @ self.a  # 2 * 8^3 FLOPs

    def outer(self) -> torch.Tensor:
        time.sleep(0.03)
        return self.inner() @ self.a

    def run(self) -> torch.Tensor:
        time.sleep(0.02)
        return self.outer()


def test_stage_clock_charges_nested_time_and_flops_to_the_inner_stage_and_restores():
    p = Pipeline()
    profile = profile_stages(type("M", (), {"profile_stages": lambda self: {"outer": [(p, "outer")],
                                                                             "inner": [(p, "inner")]}})(),
                             p.run, "cpu", warmup=0, repeats=2)
    stages = profile["stages"]
    assert list(stages) == ["outer", "inner", OTHER]
    assert [s["gflop"] for s in stages.values()] == [1024 / 1e9, 1024 / 1e9, 0.0]
    for i, total in enumerate(profile["seconds"]):
        inner, outer, other = (stages[k]["seconds"][i] for k in ("inner", "outer", OTHER))
        assert 0.05 <= inner < 0.2 and 0.03 <= outer < 0.05 + 0.1  # outer excludes inner's 50 ms
        assert 0.02 <= other < 0.1
        assert inner + outer + other == pytest.approx(total, abs=1e-9)
    # the points are restored: no instance attribute left, the class methods run again
    assert "outer" not in vars(p) and "inner" not in vars(p)


def test_stage_clock_rejects_bad_declarations_and_keeps_an_instance_override():
    p = Pipeline()
    with pytest.raises(ValueError, match="Pipeline has no method 'missing'"):
        with stage_clock({"s": [(p, "missing")]}, "cpu"):
            pass
    with pytest.raises(ValueError, match="Pipeline.inner is declared in two stages"):
        with stage_clock({"a": [(p, "inner")], "b": [(p, "inner")]}, "cpu"):
            pass
    with pytest.raises(ValueError, match="'other' is reserved"):
        with stage_clock({OTHER: [(p, "inner")]}, "cpu"):
            pass
    assert "inner" not in vars(p)  # a failed declaration leaves nothing patched
    override = lambda: torch.zeros(8, 8)  # noqa: E731 - an instance attribute the clock must put back
    p.inner = override
    with stage_clock({"inner": [(p, "inner")]}, "cpu") as clock:
        p.outer()
    assert p.inner is override and clock.seconds["inner"] >= 0


def _spec(tmp_path, config=PARTCATSEG, **kw) -> BenchmarkSpec:
    args = dict(config_file=config, opts=list(TINY_OPTS), batch_size=1, image_size=(48, 64), warmup=0,
                repeats=1, text_cache_dir=str(tmp_path / "text"))
    args.update(kw)
    return BenchmarkSpec(**args)


def test_stages_phase_of_partcatseg_adds_up_to_the_forward(tmp_path):
    spec = _spec(tmp_path)
    report = run_benchmark(spec, ["matmul_peak", "stages"], isolate=False)
    res = report["phases"]["stages"]
    assert list(res["stages"]) == ["image encoders", "cost embedding", "guidance projections", "aggregation layers",
                                   "decoder", "stage-2 cost", "stage-2 aggregation layers", "output maps", OTHER]
    # one repeat: the stage times are a partition of the forward's time
    total = res["seconds"]["median"]
    assert sum(s["seconds"]["median"] for s in res["stages"].values()) == pytest.approx(total, rel=1e-9)
    # the FLOPs are a partition of the whole forward's count
    model = _build(spec)
    model.prepare_vocabulary()
    with torch.no_grad():
        whole = count_flops(lambda: model(_records(model, spec, 1))) / 1e9
    assert res["gflop_per_image"] == pytest.approx(whole, rel=1e-12)
    gflop = {k: s["gflop"] for k, s in res["stages"].items()}
    assert min(gflop[k] for k in ("image encoders", "cost embedding", "aggregation layers", "decoder",
                                  "stage-2 aggregation layers")) > 0
    assert gflop["output maps"] == 0
    assert res["utilization"]["compute_dtype"] == "fp32" and 0 < res["utilization"]["fraction_of_peak"]
    assert "utilization" in res["stages"]["decoder"] and "utilization" not in res["stages"]["output maps"]
    table = format_table(report)
    assert "stages forward" in table and "  stage-2 aggregation layers" in table and "% of the forward" in table
    # the profile left the model's methods as they were
    assert not any(name in vars(model.aggregator) for name in ("embed_cost", "decode", "specific_cost"))


def test_stages_phase_runs_per_inference_variant_and_for_catseg(tmp_path):
    report = run_benchmark(_spec(tmp_path, inference_variants=["default", "bf16", "bf16+compile"]), ["stages"],
                           isolate=False)
    assert list(report["phases"]) == ["stages", "stages:bf16"]
    assert report["phases"]["stages:bf16"]["compute_dtype"] == "bf16"
    # a compiled mode is not profiled (the clock's wrappers would split its graphs): a note says so
    note = ("stages:bf16+compile: not profiled (stage boundaries would split the compiled graphs; "
            "the inference phase times this mode)")
    assert report["notes"] == [note] and format_table(report).splitlines()[-1] == note
    report = run_benchmark(_spec(tmp_path, config=CATSEG), ["stages"], isolate=False)
    stages = report["phases"]["stages"]["stages"]
    assert list(stages) == ["image encoders", "cost embedding", "guidance projections", "aggregation layers",
                            "decoder", OTHER]
    assert stages["image encoders"]["gflop"] > 0 and stages["decoder"]["gflop"] > 0


def test_stages_phase_of_partclipseg(tmp_path):
    config = str(REPO / "configs/zero_shot/partclipseg_voc_oracle.yaml")
    opts = ["MODEL.DEVICE", "cpu", "MODEL.PARTCLIPSEG.ARCH", "tiny", "MODEL.PARTCLIPSEG.INPUT_SIZE", "96"]
    report = run_benchmark(_spec(tmp_path, config=config, opts=opts), ["stages"], isolate=False)
    stages = report["phases"]["stages"]["stages"]
    assert list(stages) == ["text conditions", "image encoder", "decoder", OTHER]
    assert stages["image encoder"]["gflop"] > 0 and stages["decoder"]["gflop"] > 0
    assert stages["text conditions"]["gflop"] == 0  # cached before the profile
