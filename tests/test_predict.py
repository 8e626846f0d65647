"""PartPredictor / SemanticPredictor on real photographs (scikit-image's data) and the visualizer.

The real-model tests use the tiny PartCATSeg with rule-filled weights (its predictions are noise,
so they assert consistency with the model's own outputs, shapes and vocabulary rules); the exact
decoding rules (background, Oracle-style object, mask) are checked with small fake models whose
scores are chosen by hand.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import REPO, TINY_OPTS
from weights_rule import rule_state_dict

from partcatseg.cli.demo import find_images
from partcatseg.inference import PartPredictor, Prediction, Predictor, SemanticPredictor, load_image, load_mask
from partcatseg.modeling import SegmentationModel, oracle_scores, record_object_index
from partcatseg.vocab import Vocabulary, VocabularyError, get_part_dataset, parse_class_list, resolve_vocabulary

skimage_data = pytest.importorskip("skimage.data")
SK_DATA = Path(skimage_data.__file__).parent
CAT = SK_DATA / "chelsea.png"
MOTORCYCLE = SK_DATA / "motorcycle_left.png"


def small(path: Path, width: int = 120) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    h = round(im.height * width / im.width)
    return np.array(im.resize((width, h), Image.BILINEAR))


# ------------------------------------------------------------------------------ tiny real model
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from partcatseg.config import setup_cfg
    from partcatseg.modeling import build_model

    cache = tmp_path_factory.mktemp("text_cache")
    cfg = setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"), TINY_OPTS + ["MODEL.TEXT_CACHE_DIR", str(cache)])
    model = build_model(cfg)
    model.load_state_dict(rule_state_dict(model))
    return model.eval()


@pytest.fixture
def predictor(tiny_model):
    p = PartPredictor(model=tiny_model)
    yield p
    p.set_vocabulary("pascal_part_116")


def test_pred_all_matches_model_output(tiny_model, predictor):
    image = small(CAT)
    pred = predictor(image)
    assert isinstance(pred, Prediction)
    h, w = image.shape[:2]
    assert pred.labels.shape == (h, w) and pred.labels.dtype == np.int64
    assert pred.scores.shape == (116, h, w) and pred.confidence.shape == (h, w)
    assert pred.class_names == list(get_part_dataset("pascal_part_116").class_names)
    # reference: the model's own Pred-All scores, background (last channel) -> -1
    ref = tiny_model([{"image": torch.from_numpy(image).permute(2, 0, 1), "height": h, "width": w}])[0]
    expected = ref["sem_seg_all"].argmax(0)
    expected[expected == 116] = -1
    np.testing.assert_array_equal(pred.labels, expected.numpy())
    np.testing.assert_allclose(pred.scores, ref["sem_seg"].numpy(), atol=1e-6)
    np.testing.assert_allclose(pred.confidence, ref["sem_seg_all"].max(0).values.numpy(), atol=1e-6)
    assert set(pred.label_names_present) <= set(pred.class_names)
    summary = pred.summary()
    assert sum(c["pixels"] for c in summary["classes"]) + summary["unlabeled_pixels"] == h * w
    assert all(0.0 <= c["mean_score"] <= 1.0 for c in summary["classes"])
    assert [c["pixels"] for c in summary["classes"]] == sorted((c["pixels"] for c in summary["classes"]), reverse=True)


def test_image_forms_and_batching_agree(predictor, tmp_path):
    cat, moto = small(CAT, 96), small(MOTORCYCLE, 80)
    path = tmp_path / "cat.png"
    Image.fromarray(cat).save(path)
    from_path = predictor(str(path))
    from_pil = predictor(Image.fromarray(cat))
    from_array = predictor(cat)
    np.testing.assert_array_equal(from_path.labels, from_array.labels)
    np.testing.assert_array_equal(from_pil.labels, from_array.labels)
    assert from_path.source == str(path)
    singles = [from_array, predictor(moto)]
    batched = predictor([cat, moto, cat], batch_size=2)
    assert isinstance(batched, list) and len(batched) == 3
    for a, b in zip(singles + singles[:1], batched):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        # batched BLAS kernels differ in the last bits: labels agree except at near-ties
        assert (a.labels != b.labels).mean() < 0.01


def test_exif_orientation_is_applied(tmp_path):
    image = small(CAT, 64)  # 43 x 64
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    Image.fromarray(image).save(path, exif=exif, quality=95)
    array, source = load_image(path)
    assert array.shape == (64, 43, 3) and source == str(path)
    assert np.abs(array.astype(int) - np.rot90(image, k=-1).astype(int)).mean() < 6


def test_custom_objects_with_unseen_words(predictor):
    predictor.set_vocabulary(objects="teapot: spout, lid; giraffe: ossicone, neck")
    pred = predictor(small(MOTORCYCLE, 96))
    assert pred.class_names == ["teapot's spout", "teapot's lid", "giraffe's ossicone", "giraffe's neck"]
    assert pred.scores.shape[0] == 4
    assert set(pred.label_names_present) <= set(pred.class_names)
    assert pred.vocabulary_name == "custom"


def test_object_restriction_and_mask(predictor):
    predictor.set_vocabulary(objects="cat: head, ear, tail; dog: head, leg")
    image = small(CAT, 96)
    h, w = image.shape[:2]
    pred = predictor(image, object="cat")
    cat_ids = {0, 1, 2}
    assert set(np.unique(pred.labels)) <= cat_ids | {-1}
    assert np.all(pred.scores[3:] == -1.0)  # the dog's classes are excluded (Oracle-Obj)
    mask = np.zeros((h, w), bool)
    mask[:, : w // 2] = True
    masked = predictor(image, object="cat", object_mask=mask)
    assert np.all(masked.labels[~mask] == -1)
    assert set(np.unique(masked.labels[mask])) <= cat_ids  # inside the mask every pixel is a cat part
    np.testing.assert_array_equal(masked.labels[mask], pred.scores[:3].argmax(0)[mask])
    assert masked.object_name == "cat"


def test_text_features_encoded_once_per_vocabulary(predictor, monkeypatch, tiny_model):
    import partcatseg.modeling.text as text

    calls = []
    original = text.encode_class_names

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(text, "encode_class_names", counting)
    predictor.set_vocabulary(objects="kettle: spout, handle")
    image = small(CAT, 64)
    predictor(image)
    assert calls == [3, 2]  # generalized parts + objects (spout, handle, kettle), then the 2 classes
    predictor([image, image], batch_size=2)
    predictor.set_vocabulary(objects="kettle: spout, handle")
    predictor(image)
    assert calls == [3, 2]
    assert any(Path(tiny_model.text_cache.cache_dir).glob("*.pt"))


def test_max_side_keeps_the_input_size(predictor):
    image = small(MOTORCYCLE, 160)
    pred = predictor(image, max_side=64, keep_scores=False)
    assert pred.labels.shape == image.shape[:2] and pred.scores is None
    assert pred.confidence.shape == image.shape[:2]


def test_max_side_reduces_what_the_model_sees():
    seen = []

    class Spy(FakeSemanticModel):
        def forward(self, batched):
            seen.extend((tuple(r["image"].shape), r["height"], r["width"]) for r in batched)
            return super().forward(batched)

    p = SemanticPredictor(model=Spy())
    image = np.zeros((200, 300, 3), np.uint8)
    image[:, 150:] = 255  # a sharp edge: the reduced image is an area-weighted resize of it
    pred = p(image, max_side=100)
    assert seen == [((3, 67, 100), 67, 100)]
    assert pred.labels.shape == (200, 300) and pred.scores.shape == (2, 200, 300)
    p([image, image[:50, :80]], max_side=100, batch_size=2)
    assert seen[1:] == [((3, 67, 100), 67, 100), ((3, 50, 80), 50, 80)]  # small images stay as they are
    p(image)
    assert seen[-1] == ((3, 200, 300), 200, 300)  # no bound: full size


def test_unreadable_image_files_name_the_file_and_why(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"^Cannot read .*bad\.jpg as an image: cannot identify image file$"):
        load_image(bad)
    good = tmp_path / "good.jpg"
    Image.fromarray(small(CAT, 64)).save(good, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"^Cannot read .*cut\.jpg as an image: .*[Tt]runcated"):  # Pillow's wording varies
        load_image(cut)


def test_predictor_errors(predictor):
    predictor.set_vocabulary(objects="cat: head, ear")
    image = small(CAT, 64)
    with pytest.raises(VocabularyError, match=r"object 'lion' is not in the vocabulary; objects: \['cat'\]"):
        predictor(image, object="lion")
    with pytest.raises(ValueError, match=r"object_mask has shape \(2, 2\) but the image is \(43, 64\) \(H, W\); the mask must"):
        predictor(image, object_mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="must be uint8 RGB"):
        predictor(image.astype(np.float32))
    with pytest.raises(FileNotFoundError, match="Image file not found: /nonexistent.png"):
        predictor("/nonexistent.png")
    with pytest.raises(ValueError, match="got 1 values for 2 images"):
        predictor([image, image], object=["cat"])


# ------------------------------------------------------------------------------ vocabulary parsing
def resolve_part_vocabulary(vocabulary=None, **kwargs):
    return resolve_vocabulary(vocabulary, task="part", **kwargs)


def test_resolve_part_vocabulary_forms(tmp_path):
    ds = resolve_part_vocabulary("ade_part_234")
    assert ds.name == "ade_part_234" and len(ds.classes) == 234 and ds.has_parts
    assert tuple(ds.objects) == get_part_dataset("ade_part_234").obj_classes
    custom = resolve_part_vocabulary(objects={"cat": ["head", "ear"]})
    assert custom.classes == ["cat's head", "cat's ear"] and custom.objects == ["cat"]
    listed = resolve_part_vocabulary(["dog's tail", "cat's head"])
    assert listed.object_classes == ["cat", "dog"]
    path = tmp_path / "v.json"
    path.write_text('{"robot": ["arm", "antenna"]}')
    from_file = resolve_part_vocabulary(str(path))
    assert from_file.classes == ["robot's arm", "robot's antenna"] and from_file.name == "v.json"
    assert resolve_part_vocabulary(None, default=ds) is ds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocabulary="pascal_part_11"), r"Unknown part vocabulary 'pascal_part_11'; expected one of \['pascal_part_116'"),
        (dict(vocabulary="ade150"), "that is a semantic vocabulary"),
        (dict(vocabulary="cat: head"), r"goes to objects= / --objects"),
        (dict(objects="cat head, ear"), "has no ':'"),
        (dict(objects="cat: head,, ear"), "empty part name"),
        (dict(objects="cat: head; cat: ear"), "listed twice"),
        (dict(vocabulary=["cat head"]), "has no \"'s\""),
        (dict(vocabulary="pascal_part_116", objects="cat: head"), "not vocabulary and objects"),
        (dict(classes="cat, dog"), "for semantic models; part models take objects"),
        (dict(vocabulary=Vocabulary(["sky", "grass"])), "needs a part vocabulary"),
        (dict(vocabulary="missing.json"), "Vocabulary file not found: missing.json"),
    ],
)
def test_bad_part_vocabularies(kwargs, message):
    with pytest.raises(VocabularyError, match=message):
        resolve_part_vocabulary(**kwargs)


def test_semantic_vocabulary_forms():
    assert parse_class_list("cat, dog|puppy , grass") == ["cat", "dog, puppy", "grass"]
    vocab = resolve_vocabulary("ade150", task="semantic")
    assert len(vocab) == 150 and vocab.name == "ade150" and not vocab.has_parts
    assert resolve_vocabulary(classes="cat, dog|puppy", task="semantic").classes == ["cat", "dog, puppy"]
    for text, message in [("cat,, dog", "Empty name at position 2"), ("cat, cat", r"\['cat'\] more than once"),
                          ("cat|, dog", "Empty synonym"), ("  ", "Empty classes")]:
        with pytest.raises(VocabularyError, match=message):
            parse_class_list(text)
    with pytest.raises(VocabularyError, match="that is a part vocabulary"):
        resolve_vocabulary("pascal_part_116", task="semantic")
    with pytest.raises(VocabularyError, match="are for part models"):
        resolve_vocabulary(objects="cat: head", task="semantic")


def test_find_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_images([str(tmp_path)])] == ["a.png", "b.JPG"]
    assert [p.name for p in find_images([str(tmp_path / "*.png"), str(tmp_path / "a.png")])] == ["a.png"]
    with pytest.raises(FileNotFoundError, match="No files match"):
        find_images([str(tmp_path / "*.gif")])
    with pytest.raises(FileNotFoundError, match="Input not found"):
        find_images([str(tmp_path / "zzz.png")])


# ------------------------------------------------------------------------------ exact decoding (fakes)
class FakePartModel(SegmentationModel):
    """The part-model protocol with hand-chosen scores: 3 classes (2 cat, 1 dog) + background."""

    task = "part"

    def __init__(self, probs: torch.Tensor):
        vocab = Vocabulary(["cat's head", "cat's ear", "dog's head"], ["cat", "dog"])
        super().__init__(train_vocabulary=vocab, test_vocabulary=vocab)
        self.probs = probs  # (4, H, W): cat's head, cat's ear, dog's head, background
        self.register_buffer("dummy", torch.zeros(1))

    def prepare_vocabulary(self, vocabulary=None, *, refresh=False):
        pass

    def forward(self, batched):
        outs = []
        for r in batched:
            parts = oracle_scores(self.probs[:3].clone(), self.vocabulary, record_object_index(r))
            outs.append({"sem_seg": parts, "sem_seg_all": self.probs.clone()})
        return outs


def test_part_decoding_rules_with_fake_model():
    probs = torch.tensor(
        [
            [[0.9, 0.1], [0.2, 0.3]],  # cat's head
            [[0.1, 0.2], [0.6, 0.1]],  # cat's ear
            [[0.3, 0.8], [0.1, 0.2]],  # dog's head
            [[0.5, 0.5], [0.5, 0.7]],  # background
        ]
    )
    p = PartPredictor(model=FakePartModel(probs))
    image = np.zeros((2, 2, 3), np.uint8)
    pred = p(image)
    np.testing.assert_array_equal(pred.labels, [[0, 2], [1, -1]])
    np.testing.assert_allclose(pred.confidence, [[0.9, 0.8], [0.6, 0.7]])
    cat = p(image, object="cat")  # the dog's head is excluded; background still competes
    np.testing.assert_array_equal(cat.labels, [[0, -1], [1, -1]])
    mask = np.array([[True, True], [False, True]])
    inside = p(image, object="cat", object_mask=mask)  # inside the mask: always a cat part
    np.testing.assert_array_equal(inside.labels, [[0, 1], [-1, 0]])
    with_bg = p(image, object="cat", object_mask=mask, background=True)
    np.testing.assert_array_equal(with_bg.labels, [[0, -1], [-1, -1]])
    assert pred.areas() == {"cat's head": 1, "cat's ear": 1, "dog's head": 1}
    assert pred.mean_scores() == pytest.approx({"cat's head": 0.9, "cat's ear": 0.6, "dog's head": 0.8})
    p.set_vocabulary(objects="cat: head, ear; dog: head")
    assert p.model.vocabulary.classes == ["cat's head", "cat's ear", "dog's head"]


class FakeSemanticModel(SegmentationModel):
    """The semantic protocol: ``{"sem_seg": (T, H, W)}`` for the current vocabulary."""

    task = "semantic"

    def __init__(self):
        vocab = Vocabulary(["sky", "grass"])
        super().__init__(train_vocabulary=vocab, test_vocabulary=vocab)
        self.register_buffer("dummy", torch.zeros(1))

    def prepare_vocabulary(self, vocabulary=None, *, refresh=False):
        pass

    def forward(self, batched):
        out = []
        for r in batched:
            t = len(self.vocabulary)
            scores = torch.arange(t * r["height"] * r["width"], dtype=torch.float32).reshape(t, r["height"], r["width"])
            out.append({"sem_seg": scores.flip(0) if t % 2 else scores})
        return out


def test_semantic_predictor_with_fake_model():
    p = SemanticPredictor(model=FakeSemanticModel(), classes="cat, dog|puppy, grass")
    assert p.class_names == ["cat", "dog, puppy", "grass"] and p.model.vocabulary.classes == p.class_names
    pred = p(np.zeros((3, 4, 3), np.uint8))
    np.testing.assert_array_equal(pred.labels, np.zeros((3, 4)))  # flipped: class 0 has the largest scores
    mask = np.eye(3, 4, dtype=bool)
    np.testing.assert_array_equal(p(np.zeros((3, 4, 3), np.uint8), object_mask=mask).labels, np.where(mask, 0, -1))
    with pytest.raises(TypeError, match="FakePartModel is a part model; use PartPredictor"):
        SemanticPredictor(model=FakePartModel(torch.zeros(4, 1, 1)))
    with pytest.raises(TypeError, match="FakeSemanticModel is a semantic model; use SemanticPredictor"):
        PartPredictor(model=FakeSemanticModel())
    with pytest.raises(VocabularyError, match="need a part model"):
        p(np.zeros((3, 4, 3), np.uint8), object="cat")
    with pytest.raises(TypeError, match="is not a partcatseg.modeling.SegmentationModel"):
        Predictor(model=nn.Linear(2, 2))
    # one Predictor serves both tasks through the protocol
    assert Predictor(model=FakeSemanticModel()).task == "semantic"
    assert Predictor(model=FakePartModel(torch.zeros(4, 1, 1))).task == "part"


def test_bgr_models_get_bgr_images():
    seen = []

    class BGRModel(FakeSemanticModel):
        def forward(self, batched):
            seen.append(batched[0]["image"][:, 0, 0].tolist())
            return super().forward(batched)

    model = BGRModel()
    model.input_format = "BGR"
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0], image[..., 2] = 10, 200  # R, B
    Predictor(model=model)(image)
    assert seen == [[200, 0, 10]]


def test_semantic_predictor_with_tiny_catseg():
    from test_catseg import tiny_catseg

    model = tiny_catseg().eval()
    p = SemanticPredictor(model=model, classes="cat, dog|puppy, motorcycle")
    image = small(MOTORCYCLE, 96)
    pred = p(image)
    ref = model([{"image": torch.from_numpy(image).permute(2, 0, 1), "height": image.shape[0], "width": image.shape[1]}])[0]
    np.testing.assert_array_equal(pred.labels, ref["sem_seg"].argmax(0).numpy())
    assert pred.scores.shape == (3,) + image.shape[:2]
    assert set(pred.label_names_present) <= {"cat", "dog, puppy", "motorcycle"}


def test_load_mask_forms(tmp_path):
    m = np.zeros((3, 4), np.uint8)
    m[1, 2] = 255
    path = tmp_path / "m.png"
    Image.fromarray(m).save(path)
    for form in (m, torch.from_numpy(m), Image.fromarray(m), str(path)):
        np.testing.assert_array_equal(load_mask(form, (3, 4)), m > 0)


# ------------------------------------------------------------------------------ visualizer
def test_colors_outlines_and_legend():
    from partcatseg.visualize import class_color, object_outlines, render_overlay

    names = ["cat's head", "cat's ear", "dog's head"]
    assert class_color("cat's head", names) == class_color("cat's head", names) != class_color("cat's ear", names)
    labels = np.full((40, 60), -1)
    labels[5:35, 5:25] = 0
    labels[5:15, 5:25] = 1  # same object as class 0: no outline between them
    labels[5:35, 35:55] = 2
    edges = object_outlines(labels, names, thickness=1)
    assert edges[20, 5] and edges[20, 24] and edges[20, 35]  # object borders (inside the objects)
    assert not edges[14, 15] and not edges[15, 15]  # part boundary inside the cat
    assert not edges[0, 0] and not edges[20, 30]  # background
    image = np.full((40, 60, 3), 100, np.uint8)
    rendered = render_overlay(image, labels, names, legend=False, outlines=False, alpha=1.0)
    assert tuple(rendered.image[20, 40]) == class_color("dog's head", names)
    assert rendered.image.shape == image.shape and rendered.legend_placement is None
    assert tuple(rendered.image[0, 0]) == (100, 100, 100)
    big = np.full((200, 300, 3), 0, np.uint8)
    big_labels = np.kron(labels, np.ones((5, 5), int))
    rendered = render_overlay(big, big_labels, names)
    assert rendered.image.shape == big.shape and rendered.legend_placement == "inside"  # a small legend stays inside
    assert rendered.legend == ["dog's head", "cat's head", "cat's ear"]  # present classes, largest first
    assert rendered.legend_complete


def test_legend_overflow_is_summarised():
    from partcatseg.visualize import draw_legend

    entries = [(f"class number {i}", (255, 0, 0)) for i in range(40)]
    out, listed = draw_legend(np.zeros((60, 90, 3), np.uint8), entries)
    assert out.shape == (60, 90, 3)
    assert 0 < len(listed) < 40 and listed == [n for n, _ in entries[: len(listed)]]


def test_evaluation_panels_for_a_record(tmp_path):
    from partcatseg.visualize import class_color, evaluation_panels, record_panels, save_record_panels

    names = ["cat's head", "cat's ear"]
    gt = torch.full((10, 16), 255)
    gt[2:8, 2:8] = 0
    record = {"image": torch.full((3, 10, 16), 50, dtype=torch.uint8), "obj_part_sem_seg": gt,
              "file_name": "/data/2008_000123.jpg", "object_class": 7}
    sem_seg_all = torch.zeros(3, 20, 32)
    sem_seg_all[2] = 1.0  # background wins everywhere in Pred-All
    output = {"sem_seg": torch.rand(2, 20, 32), "sem_seg_all": sem_seg_all}
    panels = record_panels(record, output, names, ignore_label=255)
    image = np.full((20, 32, 3), 50, np.uint8)
    gt_up = np.kron(gt.numpy(), np.ones((2, 2), int))  # the evaluator's nearest resize to the output size
    strip = evaluation_panels(image, gt_up, sem_seg_all.argmax(0).numpy(),
                              output["sem_seg"].argmax(0).numpy(), names, legend=False)
    assert strip.shape[1] == 3 * 32 + 2 * 4 and strip.shape[0] > 20
    pred_all_panel = strip[-20:, 36:68]
    assert np.all(pred_all_panel == 50)  # background only: nothing painted
    gt_panel = strip[-20:, :32]
    assert tuple(gt_panel[10, 10]) != (50, 50, 50) and tuple(gt_panel[19, 31]) == (50, 50, 50)
    # the panels are the top-left of the picture, uncovered; one legend for all three lies beside them
    assert panels.shape[0] * panels.shape[1] > strip.shape[0] * strip.shape[1]
    np.testing.assert_array_equal(panels[: strip.shape[0], : strip.shape[1]], strip)
    beside = panels[strip.shape[0] :] if panels.shape[0] > strip.shape[0] else panels[:, strip.shape[1] :]
    assert np.any(np.all(beside == class_color("cat's head", names), axis=-1))  # the swatch of the GT's class
    path = save_record_panels(record, output, names, str(tmp_path), ignore_label=255)
    assert os.path.basename(path) == "2008_000123_obj7.png" and Image.open(path).size == (panels.shape[1], panels.shape[0])
