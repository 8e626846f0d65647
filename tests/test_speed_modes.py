"""Speed modes: class chunks are exact, the fused oneDNN linear equals F.linear, the opt-in modes
(bf16/fp16 autocast, channels_last, torch.compile) stay within their documented tolerances."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_OPTS

from partcatseg.config import ConfigError, setup_cfg
from partcatseg.modeling import build_model
from partcatseg.modeling.aggregator import class_slices
from partcatseg.modeling.fused import ONEDNN_LINEAR, linear
from partcatseg.modeling.catseg_aggregator import CATSegAggregator
from partcatseg.modeling.part_aggregator import PartAggregator
from partcatseg.modeling.speed import (
    AUTO_CHUNK_BYTES,
    amp_dtype,
    auto_class_chunk,
    autocast_context,
    resolve_class_chunk,
)

# Documented tolerances (README "Performance"): largest |probability difference| to fp32.
BF16_TOL = 0.05
FP16_TOL = 0.01
EXACT_TOL = 1e-5


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _part_inputs(agg: PartAggregator, b: int = 2, np_: int = 5, no: int = 3, nop: int = 11):
    g = torch.Generator().manual_seed(1)
    p = agg.conv1.in_channels
    c = agg.conv_proj_feat.out_channels
    gd = agg.guidance_projection[0].in_channels
    img = torch.randn(b, c, 6, 6, generator=g)
    t1 = torch.randn(b, np_ + no + 1, p, c, generator=g)
    t2 = torch.randn(b, nop + 1, p, c, generator=g)
    vis = [torch.randn(b, gd, s, s, generator=g) for s in (6, 12, 24)]
    c2p = torch.randint(0, np_, (nop,), generator=g)
    c2o = torch.randint(0, no, (nop,), generator=g)
    return img, t1, t2, vis, c2p, c2o, np_


def _tiny_part_aggregator() -> PartAggregator:
    torch.manual_seed(0)
    return PartAggregator(
        text_guidance_dim=64, text_guidance_proj_dim=32, appearance_guidance_dim=48,
        appearance_guidance_proj_dim=32, decoder_dims=(32, 16), decoder_guidance_dims=(48, 48),
        decoder_guidance_proj_dims=(8, 8), hidden_dim=32, feature_resolution=(6, 6), window_size=3,
        prompt_channel=3,
    ).eval()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    opts = TINY_OPTS + ["MODEL.TEXT_CACHE_DIR", str(tmp_path_factory.mktemp("text"))]
    torch.manual_seed(0)
    return build_model(setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"), opts)).eval()


@pytest.fixture(scope="module")
def records():
    return [{"image": _image(70, 90, 1), "height": 70, "width": 90, "object_class": 7},
            {"image": _image(64, 64, 2), "object_class": 2}]


def _run(model, recs, chunk=None):
    old = model.aggregator.class_chunk
    if chunk is not None:
        model.aggregator.class_chunk = chunk
    try:
        with torch.no_grad():
            return model(recs)
    finally:
        model.aggregator.class_chunk = old


# --------------------------------------------------------------------------- class chunks
def test_class_slices_cover_the_vocabulary():
    assert class_slices(10, 0) == [slice(0, 10)]
    assert class_slices(10, 10) == [slice(0, 10)]
    assert class_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert class_slices(3, 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_part_aggregator_equals_one_pass(chunk):
    agg = _tiny_part_aggregator()
    args = _part_inputs(agg)
    with torch.no_grad():
        ref_po, ref, ref_costs = agg(*args)
        agg.class_chunk = chunk
        po, out, costs = agg(*args)
    assert out.shape == (2, 12, 24, 24) and po.shape == (2, 9, 24, 24)
    torch.testing.assert_close(out, ref, atol=EXACT_TOL, rtol=0)
    torch.testing.assert_close(po, ref_po, atol=EXACT_TOL, rtol=0)
    for key in ref_costs:
        torch.testing.assert_close(costs[key], ref_costs[key], atol=EXACT_TOL, rtol=0)


@pytest.mark.parametrize("pad_len, num_classes, attention", [(8, 5, "linear"), (0, 9, "full"), (256, 300, "linear")])
def test_chunked_catseg_aggregator_equals_one_pass(pad_len, num_classes, attention):
    torch.manual_seed(0)
    agg = CATSegAggregator(
        text_guidance_dim=32, text_guidance_proj_dim=16, appearance_guidance_dim=32, appearance_guidance_proj_dim=16,
        decoder_dims=(32, 16), decoder_guidance_dims=(256, 128), decoder_guidance_proj_dims=(8, 4), num_layers=2,
        nheads=2, hidden_dim=16, pooling_size=(2, 2), feature_resolution=(6, 6), window_size=3, pad_len=pad_len,
        attention_type=attention,
    ).eval()
    if pad_len:
        for layer in agg.layers:
            torch.nn.init.normal_(layer.attention.padding_tokens)
    g = torch.Generator().manual_seed(2)
    img = torch.randn(2, 32, 6, 6, generator=g)
    text = torch.randn(2, num_classes, 1, 32, generator=g)
    vis = [torch.randn(2, 32, 6, 6, generator=g), torch.randn(2, 256, 12, 12, generator=g),
           torch.randn(2, 128, 24, 24, generator=g)]
    with torch.no_grad():
        ref = agg(img, text, vis)
        agg.class_chunk = 3
        out = agg(img, text, vis)
    torch.testing.assert_close(out, ref, atol=EXACT_TOL, rtol=0)


def test_chunking_is_inference_only_and_validated():
    agg = _tiny_part_aggregator()
    agg.class_chunk = 4
    assert agg.active_chunk() == 4
    assert agg.active_chunk(batch_size=2) == 2 and agg.active_chunk(batch_size=8) == 1  # maps over the batch
    agg.train()
    assert agg.active_chunk() == 0  # training always runs the whole vocabulary
    with pytest.raises(ValueError, match="class_chunk=-1"):
        agg.class_chunk = -1


def test_model_outputs_do_not_depend_on_the_chunk(tiny_model, records):
    ref = _run(tiny_model, records, chunk=0)
    for chunk in (5, 16, 117):
        out = _run(tiny_model, records, chunk=chunk)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a["sem_seg"], b["sem_seg"], atol=EXACT_TOL, rtol=0)
            torch.testing.assert_close(a["sem_seg_all"], b["sem_seg_all"], atol=EXACT_TOL, rtol=0)


def test_class_chunk_from_config(tmp_path):
    cfg = setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"),
                    TINY_OPTS + ["MODEL.TEXT_CACHE_DIR", str(tmp_path)])
    agg = build_model(cfg).aggregator
    # automatic: one slice of about AUTO_CHUNK_BYTES of embedding; 6x6x32 floats per tiny class
    assert agg.class_chunk == auto_class_chunk((6, 6), 32) == AUTO_CHUNK_BYTES // (6 * 6 * 32 * 4) == 1024
    assert resolve_class_chunk(7, (6, 6), 32) == 7
    # the full-size aggregator: 24x24 positions, 128 channels
    assert auto_class_chunk((24, 24), 128) == 16 and auto_class_chunk((24, 24), 128, "cuda") == 128
    with pytest.raises(ValueError, match="TEST.CLASS_CHUNK=-2"):
        resolve_class_chunk(-2, (6, 6), 32)
    cfg = setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"),
                    TINY_OPTS + ["MODEL.TEXT_CACHE_DIR", str(tmp_path), "TEST.CLASS_CHUNK", "9"])
    assert build_model(cfg).aggregator.class_chunk == 9


# --------------------------------------------------------------------------- fused linear
@pytest.mark.skipif(not ONEDNN_LINEAR, reason="this torch build has no oneDNN linear")
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
def test_fused_linear_equals_f_linear(activation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 16, generator=g).transpose(1, 2)  # strided input
    w = torch.randn(24, 32, generator=g)[:, :16]  # strided weight (oneDNN needs a contiguous copy)
    b = torch.randn(24, generator=g)
    want = F.linear(x, w, b)
    want = {"none": want, "relu": F.relu(want), "gelu": F.gelu(want)}[activation]
    with torch.no_grad():
        got = linear(x, w, b, activation=activation)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    residual = torch.randn(2, 7, 5, 24, generator=g)
    with torch.no_grad():
        got = linear(x, w, b, residual=residual)
    torch.testing.assert_close(got, residual + F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    # with gradients the plain path is used (oneDNN's op has no backward here)
    xg = x.clone().requires_grad_(True)
    linear(xg, w, b, activation=activation).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


def test_linear_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation='tanh'"):
        linear(torch.ones(2, 3), torch.ones(4, 3), activation="tanh")


# --------------------------------------------------------------------------- opt-in modes
def test_amp_modes_are_validated():
    assert amp_dtype("") is None and amp_dtype("bf16") is torch.bfloat16 and amp_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="AMP mode 'fp8'"):
        amp_dtype("fp8")
    with pytest.raises(ConfigError, match="TEST.AMP='fp8'"):
        setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"), TINY_OPTS + ["TEST.AMP", "fp8"])
    assert isinstance(autocast_context("cpu", "bf16"), torch.autocast)


@pytest.mark.parametrize("mode, tol", [("bf16", BF16_TOL), ("fp16", FP16_TOL)])
def test_autocast_stays_close_to_fp32_and_keeps_text_fp32(tmp_path, records, mode, tol):
    ref_model, amp_model = _model_pair(tmp_path, ["TEST.AMP", mode])
    assert amp_model.inference_amp == mode and amp_model.describe()["inference_amp"] == mode
    ref = _run(ref_model, records)
    out = _run(amp_model, records)
    text_before = ref_model.vocab_tensors(ref_model.vocabulary).text_specific
    for a, b in zip(out, ref):
        assert a["sem_seg"].dtype == torch.float32 and a["sem_seg"].shape == b["sem_seg"].shape
        diff = (a["sem_seg_all"] - b["sem_seg_all"]).abs().max().item()
        assert 0 < diff < tol, diff  # it did run in reduced precision, and stayed close
        # the Oracle-Obj mask is unaffected
        assert torch.equal(a["sem_seg"] == -1, b["sem_seg"] == -1)
    text = amp_model.vocab_tensors(amp_model.vocabulary).text_specific
    assert text.dtype == torch.float32 and torch.equal(text, text_before)


def _model_pair(tmp_path, extra_opts: list) -> tuple:
    """(reference, configured) tiny models with the same seeded weights; ``extra_opts`` on the second."""
    opts = TINY_OPTS + ["MODEL.TEXT_CACHE_DIR", str(tmp_path)]
    models = []
    for more in ([], extra_opts):
        torch.manual_seed(0)
        models.append(build_model(setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"), opts + more)).eval())
    assert set(models[0].state_dict()) == set(models[1].state_dict())  # same checkpoint keys
    return tuple(models)


def _assert_same_outputs(model, ref_model, recs, atol: float) -> None:
    with torch.no_grad():
        for a, b in zip(model(recs), ref_model(recs)):
            torch.testing.assert_close(a["sem_seg_all"], b["sem_seg_all"], atol=atol, rtol=0)


def test_channels_last_gives_the_same_outputs(tmp_path, records):
    ref_model, model = _model_pair(tmp_path, ["MODEL.CHANNELS_LAST", "True"])
    weight = model.aggregator.decoder1.conv.double_conv[0].weight  # 3x3, many channels
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    _assert_same_outputs(model, ref_model, records, EXACT_TOL)


@pytest.mark.slow
def test_compile_gives_the_same_outputs(tmp_path, records):
    """torch.compile in place (about a minute of compilation for the tiny model on 2 cores)."""
    ref_model, model = _model_pair(tmp_path, ["MODEL.COMPILE", "True"])
    assert hasattr(model.aggregator, "_compiled_call_impl") and model.aggregator._compiled_call_impl is not None
    _assert_same_outputs(model, ref_model, records[:1], 1e-4)


# --------------------------------------------------------------------------- full size, parity fixture
@pytest.mark.slow
def test_speed_mode_accuracy_on_parity_fixture(capsys):
    """The README's accuracy deltas (``tools/benchmark.py --phases accuracy --fixture ...``) stay
    within the documented tolerances; chunking and channels_last are exact."""
    from conftest import DATA

    from weights_rule import fixture_record, load_fixture, load_rule_weights

    from partcatseg.benchmark.accuracy import mode_deltas

    fx = load_fixture(str(DATA / "partcatseg_voc_single_prompt.pt"))
    opts = list(fx["opts"]) + ["MODEL.DEVICE", "cpu", "MODEL.TEXT_CACHE_DIR", ""]
    cfg = setup_cfg(str(REPO / fx["config"]), opts)
    model = load_rule_weights(build_model(cfg), fx).eval()

    def build(extra):
        other = build_model(setup_cfg(str(REPO / fx["config"]), opts + list(extra)))
        other.load_state_dict(model.state_dict())
        return other
    record = fixture_record(fx)
    assert model.aggregator.class_chunk == 16  # the automatic chunk of the full-size aggregator
    ref = _run(model, [record])[0]["sem_seg_all"]
    torch.testing.assert_close(ref, fx["sem_seg_all"].float(), atol=1e-3, rtol=0)  # the parity test's bound

    deltas = mode_deltas(model, build, [record], ("one_pass", "bf16", "fp16", "channels_last"))
    with capsys.disabled():
        print("\nspeed-mode accuracy vs fp32 (parity fixture, |probability difference|):")
        for name, d in deltas.items():
            print(f"  {name:14s} {d}")
    assert deltas["reference"]["class_chunk"] == 16
    assert deltas["one_pass"]["max_abs_diff"] <= EXACT_TOL
    assert deltas["channels_last"]["max_abs_diff"] <= EXACT_TOL
    assert 0 < deltas["bf16"]["max_abs_diff"] <= BF16_TOL and 0 < deltas["fp16"]["max_abs_diff"] <= FP16_TOL
    assert deltas["fp16"]["mean_abs_diff"] < deltas["bf16"]["mean_abs_diff"]  # 10 vs 7 mantissa bits
    # the model is left as it was: the default path still gives the reference
    torch.testing.assert_close(_run(model, [record])[0]["sem_seg_all"], ref, atol=0, rtol=0)


def test_compare_outputs_and_mode_validation(tiny_model, records):
    from partcatseg.benchmark.accuracy import compare_outputs, mode_deltas

    def build(extra):
        other = build_model(setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"), TINY_OPTS + list(extra)))
        other.load_state_dict(tiny_model.state_dict())
        return other

    a = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]])  # T=2, 1x2 pixels: argmax 0, 1
    b = torch.tensor([[[0.4, 0.1]], [[0.6, 0.7]]])  # argmax 1, 1
    d = compare_outputs([b], [a])
    assert d == pytest.approx({"max_abs_diff": 0.5, "mean_abs_diff": 0.25, "argmax_agreement": 0.5})
    with pytest.raises(ValueError, match=r"output shapes \[\(2, 1, 1\)\] differ"):
        compare_outputs([a[:, :, :1]], [a])
    with pytest.raises(ValueError, match="unknown accuracy modes \\['int4'\\]"):
        mode_deltas(tiny_model, build, records, ["int4"])
    out = mode_deltas(tiny_model, build, records, ["one_pass", "channels_last"])
    assert out["one_pass"]["max_abs_diff"] <= EXACT_TOL and out["one_pass"]["argmax_agreement"] == 1.0
    weight = tiny_model.aggregator.decoder1.conv.double_conv[0].weight  # 3x3, many channels
    assert not weight.is_contiguous(memory_format=torch.channels_last)  # the mode ran on another model
    assert out["reference"]["class_chunk"] == 1024
