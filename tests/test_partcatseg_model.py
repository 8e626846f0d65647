"""PartCATSeg model: official keys, numerical parity with the official code, forward contract."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import DATA, REPO, read_tsv
from weights_rule import rule_state_dict

from partcatseg.config import setup_cfg
from partcatseg.modeling import build_model
from partcatseg.modeling.partcatseg import PartCATSeg
from partcatseg.vocab import oracle_class_mask


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


# --------------------------------------------------------------------------- full-size, official
@pytest.mark.slow
@pytest.mark.parametrize(
    "config, tsv",
    [
        ("partcatseg_voc", "partcatseg_voc.tsv"),
        ("partcatseg_ade", "partcatseg_ade.tsv"),
        ("partcatseg_partimagenet", "partcatseg_partimagenet.tsv"),
        ("partcatseg_partimagenet_ood", "partcatseg_voc.tsv"),
    ],
)
def test_state_dict_equals_official_keys_and_shapes(config, tsv, tmp_path):
    cfg = setup_cfg(str(REPO / f"configs/zero_shot/{config}.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.TEXT_CACHE_DIR", str(tmp_path)])
    model = build_model(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = read_tsv(tsv)
    assert sorted(set(ours) - set(ref)) == []
    assert sorted(set(ref) - set(ours)) == []
    assert {k: s for k, s in ours.items() if s != ref[k]} == {}
    assert len(ours) == 804
    # the group counts of spec §5
    assert sum(k.startswith("backbone.dinov2.") for k in ours) == 175
    assert sum(k.startswith("sem_seg_head.predictor.clip_model.") for k in ours) == 302
    assert sum(k.endswith("attn_mask") for k in ours) == 6


@pytest.fixture(scope="module")
def fixture_data():
    return torch.load(DATA / "partcatseg_voc_single_prompt.pt", weights_only=False)


@pytest.fixture(scope="module")
def parity_model(fixture_data, tmp_path_factory):
    """The fixture's configuration with the fixture's rule-filled weights, via the official config."""
    opts = list(fixture_data["opts"]) + [
        "MODEL.DEVICE", "cpu", "MODEL.TEXT_CACHE_DIR", str(tmp_path_factory.mktemp("text")),
    ]
    cfg = setup_cfg(str(REPO / fixture_data["config"]), opts)
    model = build_model(cfg)
    sd = rule_state_dict(model)
    sd["sem_seg_head.predictor.non_object_embedding"] = fixture_data["non_object_embedding"]
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.mark.slow
def test_parity_with_official_fixture(parity_model, fixture_data):
    fx = fixture_data
    model = parity_model
    assert model.vocabulary.objects == fx["test_obj_classes"]
    assert list(model.vocabulary.classes) == fx["test_text_classes"]
    vt = model.vocab_tensors(model.vocabulary)
    torch.testing.assert_close(vt.text_part_obj, fx["text_part_obj_features_test"], atol=1e-5, rtol=0)
    torch.testing.assert_close(vt.text_specific, fx["text_specific_part_features_test"], atol=1e-5, rtol=0)
    with torch.no_grad():
        clip_feats, dino = model.extract_features([fx["image"]])
        torch.testing.assert_close(dino["res4"], fx["dino_feats"]["res4"], atol=1e-4, rtol=0)
        part_obj, specific, _ = model.head(clip_feats, dino, vt)
        torch.testing.assert_close(part_obj, fx["head_part_obj_logits"], atol=2e-4, rtol=0)
        torch.testing.assert_close(specific, fx["head_specific_part_logits"], atol=2e-4, rtol=0)
        record = {"image": fx["image"], "height": fx["height"], "width": fx["width"],
                  "object_class": fx["gt_object_class"]}
        out = model([record])[0]
    assert out["sem_seg"].shape == (116, 192, 256) and out["sem_seg_all"].shape == (117, 192, 256)
    torch.testing.assert_close(out["sem_seg"], fx["sem_seg_oracle"].float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["sem_seg_all"], fx["sem_seg_all"].float(), atol=1e-3, rtol=0)
    # Oracle-Obj: exactly the classes lacking "cat" are -1
    masked = (out["sem_seg"] == -1).all(dim=(1, 2))
    expected = torch.tensor([not a for a in oracle_class_mask(fx["test_text_classes"], "cat")])
    assert torch.equal(masked, expected)

    model.train()
    try:
        loss = model([{"image": fx["image"], "sem_seg": fx["obj_gt"], "obj_part_sem_seg": fx["part_gt"]}])
    finally:
        model.eval()
    # one optimised loss; the four terms ride along for logging
    assert set(loss) == {"loss_sem_seg", "term_specific_part", "term_part", "term_obj", "term_jsd"}
    assert abs(loss["loss_sem_seg"].item() - fx["train_loss"]) <= 1e-4 * fx["train_loss"]


# --------------------------------------------------------------------------- tiny model contract
@pytest.fixture
def tiny_model(tiny_partcatseg_cfg) -> PartCATSeg:
    torch.manual_seed(0)
    return build_model(tiny_partcatseg_cfg).eval()


def test_build_is_offline_and_on_requested_device(tiny_model):
    assert all(p.device.type == "cpu" for p in tiny_model.parameters())
    assert tiny_model.device.type == "cpu"


def test_construction_copies_stage_weights_and_freezes(tiny_model):
    agg = tiny_model.aggregator
    assert torch.equal(agg.conv2.weight, agg.conv1.weight)
    for a, b in zip(agg.layers_specific_part.parameters(), agg.layers.parameters()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in tiny_model.clip_model.parameters())
    assert not any(p.requires_grad for p in agg.layers_object.parameters())
    assert all(p.requires_grad for p in tiny_model.backbone.parameters())
    assert all(p.requires_grad for p in agg.layers_specific_part.parameters())


def test_inference_outputs_and_oracle_mask(tiny_model):
    vocab = tiny_model.vocabulary
    records = [{"image": _image(70, 90, 1), "height": 35, "width": 45, "object_class": 7}]
    out = tiny_model(records)[0]
    assert out["sem_seg"].shape == (116, 35, 45)
    assert out["sem_seg_all"].shape == (117, 35, 45)
    allowed = torch.tensor(oracle_class_mask(vocab.classes, "cat"))
    assert (out["sem_seg"][~allowed] == -1).all()
    assert ((out["sem_seg"][allowed] >= 0) & (out["sem_seg"][allowed] <= 1)).all()
    # Pred-All scores are plain sigmoid probabilities over all classes + background
    assert ((out["sem_seg_all"] > 0) & (out["sem_seg_all"] < 1)).all()
    # without an object the scores are not masked
    free = tiny_model([{"image": records[0]["image"], "height": 35, "width": 45}])[0]
    assert (free["sem_seg"] >= 0).all()
    torch.testing.assert_close(free["sem_seg"][allowed], out["sem_seg"][allowed])


def test_batch_equals_single_images(tiny_model):
    a = {"image": _image(64, 96, 2), "height": 64, "width": 96, "object_class": 14}
    b = {"image": _image(100, 70, 3), "height": 50, "width": 35, "object_class": 0}
    batched = tiny_model([a, b])
    single = [tiny_model([a])[0], tiny_model([b])[0]]
    for x, y in zip(batched, single):
        torch.testing.assert_close(x["sem_seg"], y["sem_seg"], atol=1e-5, rtol=0)
        torch.testing.assert_close(x["sem_seg_all"], y["sem_seg_all"], atol=1e-5, rtol=0)


def test_training_loss_and_gradients(tiny_model):
    model = tiny_model.train()
    g = torch.Generator().manual_seed(5)
    n_cls = len(model.train_vocabulary)
    batch = []
    for i in range(2):
        part = torch.randint(0, n_cls, (64, 64), generator=g)
        part[:10] = 255
        obj = torch.full((64, 64), 255, dtype=torch.long)
        obj[10:] = 0  # aeroplane, a base object with parts
        batch.append({"image": _image(64, 64, 10 + i), "sem_seg": obj, "obj_part_sem_seg": part})
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "term_specific_part", "term_part", "term_obj", "term_jsd"}
    loss = losses["loss_sem_seg"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    terms = [losses[k] for k in ("term_specific_part", "term_part", "term_obj", "term_jsd")]
    assert not any(t.requires_grad for t in terms)
    torch.testing.assert_close(sum(terms), loss.detach())  # all weights 1.0
    loss.backward()
    agg = model.aggregator
    assert agg.conv_proj_feat.weight.grad is not None and agg.conv_proj_feat.weight.grad.abs().sum() > 0
    assert model.backbone.dinov2.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip_model.parameters())
    assert all(p.grad is None for p in agg.layers_object.parameters())
    # the background embedding never receives a gradient (it only enters the cached text features)
    assert model.sem_seg_head.predictor.non_object_embedding.grad is None


def test_background_text_follows_checkpoint_embedding(tiny_model):
    vt = tiny_model.vocab_tensors(tiny_model.vocabulary)
    new = torch.randn(1, 64)
    with torch.no_grad():
        tiny_model.sem_seg_head.predictor.non_object_embedding.copy_(new)
    vt2 = tiny_model.vocab_tensors(tiny_model.vocabulary)
    expected = (new / new.norm()).expand(vt2.text_part_obj.shape[1], -1)
    torch.testing.assert_close(vt2.text_part_obj[-1], expected)
    torch.testing.assert_close(vt2.text_specific[-1], expected)
    assert not torch.equal(vt.text_part_obj[-1], vt2.text_part_obj[-1])
    # the class rows are unchanged (text tower untouched)
    torch.testing.assert_close(vt.text_specific[:-1], vt2.text_specific[:-1])


def test_custom_vocabulary_with_new_words(tiny_model):
    from partcatseg.vocab import Vocabulary

    vocab = Vocabulary.from_objects({"teapot": ["spout", "lid"], "owl": ["beak", "wing", "lid"]})
    tiny_model.set_vocabulary(vocab)
    out = tiny_model([{"image": _image(48, 48, 4), "height": 48, "width": 48, "object_class": 1}])[0]
    assert out["sem_seg"].shape == (5, 48, 48)
    allowed = torch.tensor(oracle_class_mask(vocab.classes, tiny_model.vocabulary.objects[1]))
    assert tiny_model.vocabulary.objects == ["owl", "teapot"]  # derived objects, sorted
    with pytest.raises(ValueError, match="needs a part vocabulary"):
        tiny_model.set_vocabulary(Vocabulary(["sky", "grass"]))
    assert (out["sem_seg"][~allowed] == -1).all() and (out["sem_seg"][allowed] >= 0).all()


def test_state_dict_round_trip_gives_identical_outputs(tiny_model, tiny_partcatseg_cfg):
    other = build_model(tiny_partcatseg_cfg).eval()
    other.load_state_dict(copy.deepcopy(tiny_model.state_dict()))
    rec = {"image": _image(40, 56, 6), "height": 40, "width": 56}
    torch.testing.assert_close(other([rec])[0]["sem_seg_all"], tiny_model([rec])[0]["sem_seg_all"])
