"""Augmentations and dataset mappers on tiny hand-written fixtures."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from partcatseg.data.mappers import (
    BadRecordError,
    ObjPartSemanticMapper,
    PartImageNetMapper,
    PartImageNetOODMapper,
    SemanticMapper,
    build_mapper,
    read_image,
)
from partcatseg.data.transforms import (
    AugInput,
    AugRandom,
    ColorAugSSD,
    ColorAugSSDTransform,
    RandomCrop,
    RandomCrop_CategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    apply_augmentations,
)
from partcatseg.vocab.datasets import get_part_dataset

IGN8, IGN16 = 255, 65535


# ----------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hw, short, max_size, expected",
    [
        ((375, 500), 640, 768, (576, 768)),  # long side capped: 853.3 -> 768, short 640 -> 576
        ((500, 375), 640, 768, (768, 576)),
        ((333, 500), 384, 768, (384, 577)),  # 576.58 rounds up with int(x + 0.5)
        ((3, 5), 4, 10**9, (4, 7)),  # 6.67 -> 7
        ((300, 300), 640, 2560, (640, 640)),
        ((480, 640), 384, 768, (384, 512)),
    ],
)
def test_resize_shortest_edge_output_shape(hw, short, max_size, expected):
    assert ResizeShortestEdge.get_output_shape(*hw, short, max_size) == expected


def test_resize_shortest_edge_sampling():
    img = np.zeros((30, 40, 3), np.uint8)
    rng = AugRandom.from_seed(3)
    choice = ResizeShortestEdge((10, 20), 1000, "choice")
    sizes = {choice.get_transform(AugInput(img), rng).new_h for _ in range(40)}
    assert sizes == {10, 20}
    ranged = ResizeShortestEdge((10, 13), 1000, "range")
    sizes = {ranged.get_transform(AugInput(img), rng).new_h for _ in range(200)}
    assert sizes == {10, 11, 12, 13}
    with pytest.raises(ValueError, match="sample_style"):
        ResizeShortestEdge(10, 20, "bogus")


def test_resize_transform_image_is_pil_bilinear_and_labels_legacy_nearest():
    rs = np.random.RandomState(0)
    img = rs.randint(0, 256, (12, 20, 3)).astype(np.uint8)
    tfm = ResizeTransform(12, 20, 5, 7)
    expected = np.asarray(Image.fromarray(img).resize((7, 5), Image.BILINEAR))
    np.testing.assert_array_equal(tfm.apply_image(img), expected)
    # PIL downscaling is antialiased: a 1-px checkerboard averages to mid-grey everywhere
    checker = ((np.indices((16, 16)).sum(0) % 2) * 255).astype(np.uint8)
    small = ResizeTransform(16, 16, 4, 4).apply_image(checker)
    assert small.min() >= 100 and small.max() <= 155

    # label path: torch legacy nearest, src = floor(dst * in / out) -> columns 0, 1, 3 of 5
    labels = np.tile(np.arange(5, dtype=np.float64), (2, 1))
    out = ResizeTransform(2, 5, 2, 3).apply_segmentation(labels)
    np.testing.assert_array_equal(out, [[0, 1, 3], [0, 1, 3]])  # PIL/centre nearest would give 0, 2, 4
    assert out.dtype == np.float64
    up = ResizeTransform(2, 2, 4, 4).apply_segmentation(np.array([[1.0, 2.0], [3.0, 65535.0]]))
    np.testing.assert_array_equal(up, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 65535, 65535], [3, 3, 65535, 65535]])


def test_resize_transform_float_image_uses_torch_bilinear():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = ResizeTransform(3, 4, 6, 8).apply_image(img)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img)[None, None], size=(6, 8), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(out, ref)


def _coded(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image whose red channel = pixel code, and two label maps with the same codes."""
    code = (np.arange(h * w) % 250).reshape(h, w)
    img = np.stack([code, np.zeros_like(code), np.full_like(code, 7)], -1).astype(np.uint8)
    return img, code.astype(np.float64), (code + 1000).astype(np.float64)


def test_crop_and_flip_move_image_and_both_label_maps_together():
    img, obj, part = _coded(20, 30)
    for seed in range(6):
        aug = AugInput(img, sem_seg=obj, part_sem_seg=part)
        augs = [RandomCrop_CategoryAreaConstraint("absolute", (8, 12), 1.0, 255), RandomFlip()]
        tfms = apply_augmentations(augs, aug, AugRandom.from_seed(seed))
        assert aug.image.shape == (8, 12, 3)
        np.testing.assert_array_equal(aug.image[:, :, 0], aug.sem_seg)
        np.testing.assert_array_equal(aug.sem_seg + 1000, aug.part_sem_seg)
        crop = tfms.transforms[0]
        ref = obj[crop.y0 : crop.y0 + 8, crop.x0 : crop.x0 + 12]
        flipped = type(tfms.transforms[1]).__name__ == "HFlipTransform"
        np.testing.assert_array_equal(aug.sem_seg, ref[:, ::-1] if flipped else ref)


def test_crop_smaller_image_and_category_constraint():
    img, obj, _ = _coded(5, 30)
    aug = AugInput(img, sem_seg=obj)
    RandomCrop_CategoryAreaConstraint("absolute", (384, 384), 1.0)(aug, AugRandom.from_seed(0))
    assert aug.image.shape[:2] == (5, 30)  # min(crop, h) x min(crop, w)
    # two categories side by side: a max area < 1 only accepts crops that straddle the boundary
    # (2 of the 11 possible x0 fail; 10 failing tries in a row would have probability ~4e-8)
    sem = np.zeros((10, 20))
    sem[:, 10:] = 1
    policy = RandomCrop_CategoryAreaConstraint("absolute", (10, 10), 0.95, 255)
    plain = RandomCrop_CategoryAreaConstraint("absolute", (10, 10), 1.0, 255)
    straddles = {True: 0, False: 0}
    for seed in range(20):
        tfm = policy.get_transform(AugInput(np.zeros((10, 20, 3), np.uint8), sem_seg=sem), AugRandom.from_seed(seed))
        assert 0 < sem[:, tfm.x0 : tfm.x0 + 10].mean() < 1
        tfm = plain.get_transform(AugInput(np.zeros((10, 20, 3), np.uint8), sem_seg=sem), AugRandom.from_seed(seed))
        straddles[bool(0 < sem[:, tfm.x0 : tfm.x0 + 10].mean() < 1)] += 1
    assert straddles[False] > 0  # without the constraint single-category crops do occur
    crop = RandomCrop("relative", (0.5, 0.5))
    assert crop.get_crop_size((11, 20), AugRandom.from_seed(0)) == (6, 10)


def _official_ssd(img: np.ndarray, r: random.Random) -> np.ndarray:
    """Reference: the PointRend distortion with its lazy Python-random draws (RGB input)."""

    def conv(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(x):
        return conv(x, alpha=r.uniform(0.5, 1.5)) if r.randrange(2) else x

    def saturation(x):
        if r.randrange(2):
            x = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
            x[:, :, 1] = conv(x[:, :, 1], alpha=r.uniform(0.5, 1.5))
            return cv2.cvtColor(x, cv2.COLOR_HSV2BGR)
        return x

    def hue(x):
        if r.randrange(2):
            x = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
            x[:, :, 0] = (x[:, :, 0].astype(int) + r.randint(-18, 18)) % 180
            return cv2.cvtColor(x, cv2.COLOR_HSV2BGR)
        return x

    x = np.ascontiguousarray(img[:, :, ::-1])
    if r.randrange(2):
        x = conv(x, beta=r.uniform(-32, 32))
    if r.randrange(2):
        x = hue(saturation(contrast(x)))
    else:
        x = contrast(hue(saturation(x)))
    return x[:, :, ::-1]


def test_color_aug_matches_official_draw_order_and_leaves_labels():
    img = np.random.RandomState(1).randint(0, 256, (9, 11, 3)).astype(np.uint8)
    policy = ColorAugSSD("RGB")
    changed = 0
    for seed in range(40):
        tfm = policy.sample(random.Random(seed))
        out = tfm.apply_image(img)
        np.testing.assert_array_equal(out, _official_ssd(img, random.Random(seed)))
        changed += int(not np.array_equal(out, img))
        if tfm.brightness_beta is not None:
            assert -32 <= tfm.brightness_beta <= 32
        if tfm.hue_shift is not None:
            assert -18 <= tfm.hue_shift <= 18
    assert changed > 30
    seg = np.arange(99, dtype=np.float64).reshape(9, 11)
    aug = AugInput(img, sem_seg=seg.copy(), part_sem_seg=seg.copy() + 1)
    tfm = policy(aug, AugRandom.from_seed(5))
    assert isinstance(tfm, ColorAugSSDTransform)
    np.testing.assert_array_equal(aug.sem_seg, seg)
    np.testing.assert_array_equal(aug.part_sem_seg, seg + 1)
    again = AugInput(img)
    policy(again, AugRandom.from_seed(5))
    np.testing.assert_array_equal(again.image, aug.image)  # deterministic for a seed


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
H, W = 30, 40


def _save(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return str(path)


def _image(tmp_path, name="img.png", h=H, w=W):
    rs = np.random.RandomState(0)
    return _save(tmp_path / name, rs.randint(0, 256, (h, w, 3)).astype(np.uint8))


@pytest.fixture
def pascal_record(tmp_path):
    """Objects: cat (7) on the left, person (14) on the right, bg 255. Parts: cat head 40, person head 90."""
    obj = np.full((H, W), IGN8, np.uint8)
    obj[:, :20] = 7
    obj[:, 25:] = 14
    part = np.full((H, W), IGN8, np.uint8)
    part[:15, :20] = 40
    part[15:, 25:] = 90
    return {
        "file_name": _image(tmp_path),
        "sem_seg_file_name": _save(tmp_path / "part.png", part),
        "obj_sem_seg_file_name": _save(tmp_path / "obj.png", obj),
    }, obj, part


def _test_mapper(**kw) -> ObjPartSemanticMapper:
    kw.setdefault("ignore_label", IGN8)
    return ObjPartSemanticMapper(
        False, augmentations=[ResizeShortestEdge(60, 1000, "choice")], num_classes=116, num_obj_classes=20, **kw
    )


def test_obj_part_mapper_test_mode_outputs(pascal_record):
    record, obj, part = pascal_record
    out = _test_mapper()(record)
    assert {"image", "sem_seg", "obj_part_sem_seg", "object_class", "height", "width", "file_name",
            "sem_seg_file_name", "obj_sem_seg_file_name"} <= set(out)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 60, 80)
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (60, 80)
    assert out["obj_part_sem_seg"].dtype == torch.int64 and out["obj_part_sem_seg"].shape == (60, 80)
    assert (out["height"], out["width"]) == (H, W)
    assert "ori_size" not in out  # no padding at test time
    # 2x upscaling with legacy nearest = pixel repetition
    np.testing.assert_array_equal(out["sem_seg"].numpy(), np.repeat(np.repeat(obj, 2, 0), 2, 1))
    np.testing.assert_array_equal(out["obj_part_sem_seg"].numpy(), np.repeat(np.repeat(part, 2, 0), 2, 1))
    assert out["object_class"] == 7  # first object id present (instances.gt_classes[0])
    expected_img = np.asarray(Image.open(record["file_name"]).resize((80, 60), Image.BILINEAR))
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), expected_img)
    assert record.keys() == {"file_name", "sem_seg_file_name", "obj_sem_seg_file_name"}  # input untouched


def test_obj_condition_masking_and_none(pascal_record):
    record, obj, part = pascal_record
    out = _test_mapper()(dict(record, category_id=14))
    sem, prt = out["sem_seg"].numpy(), out["obj_part_sem_seg"].numpy()
    assert set(np.unique(sem)) == {14, IGN8}
    assert set(np.unique(prt)) == {90, IGN8}
    assert out["object_class"] == 14
    np.testing.assert_array_equal(sem == 14, np.repeat(np.repeat(obj == 14, 2, 0), 2, 1))
    # an object id with no part pixels (or absent) -> all part GT ignored -> None
    assert _test_mapper()(dict(record, category_id=3)) is None


def test_remap_with_obj_and_part_maps(pascal_record):
    record, _, _ = pascal_record
    mapper = _test_mapper(obj_map={7: 5}, obj_part_map={40: 2})  # person / part 90 are "novel"
    out = mapper(record)
    assert set(np.unique(out["sem_seg"].numpy())) == {5, IGN8}
    assert set(np.unique(out["obj_part_sem_seg"].numpy())) == {2, IGN8}
    assert out["object_class"] == 5
    only_novel = _test_mapper(obj_part_map={1: 0})
    assert only_novel(record) is None


def test_obj_part_mapper_train_pads_with_128_and_ignore(pascal_record):
    record, _, _ = pascal_record
    augs = [
        ResizeShortestEdge((24,), 48, "choice"),
        RandomCrop_CategoryAreaConstraint("absolute", (16, 16), 1.0, IGN8),
        ColorAugSSD("RGB"),
        RandomFlip(),
    ]
    mapper = ObjPartSemanticMapper(True, augmentations=augs, ignore_label=IGN8, size_divisibility=20)
    outs = [mapper(record, AugRandom.from_seed(s)) for s in range(8)]
    outs = [o for o in outs if o is not None]
    assert outs
    for out in outs:
        assert out["image"].shape == (3, 20, 20) and out["sem_seg"].shape == (20, 20)
        assert out["ori_size"] == (16, 16)
        assert torch.all(out["image"][:, 16:, :] == 128) and torch.all(out["image"][:, :, 16:] == 128)
        for key in ("sem_seg", "obj_part_sem_seg"):
            assert torch.all(out[key][16:, :] == IGN8) and torch.all(out[key][:, 16:] == IGN8)
    a = mapper(record, AugRandom.from_seed(3))
    b = mapper(record, AugRandom.from_seed(3))
    for key in ("image", "sem_seg", "obj_part_sem_seg"):
        assert torch.equal(a[key], b[key])


def test_ade_style_annotations_and_16bit_parts(tmp_path):
    part = np.full((H, W), IGN16, np.uint16)
    part[2:8, 4:12] = 233  # last ADE class
    part[20:25, 30:35] = 5
    ann = lambda cat, x0, y0, x1, y1: {  # noqa: E731
        "category_id": cat, "iscrowd": 0, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]
    }
    record = {
        "file_name": _image(tmp_path),
        "sem_seg_file_name": _save(tmp_path / "part16.png", part),
        "obj_annotations": [ann(27, 0, 0, 20, 15), ann(43, 28, 18, 38, 28), ann(36, 10, 0, 14, 4)],
        "category_id": 27,
    }
    mapper = ObjPartSemanticMapper(False, augmentations=[], ignore_label=IGN16, num_classes=234, num_obj_classes=44)
    out = mapper(record)
    sem, prt = out["sem_seg"].numpy(), out["obj_part_sem_seg"].numpy()
    expected_obj = np.full((H, W), IGN16)
    expected_obj[0:15, 0:20] = 27
    expected_obj[0:4, 10:14] = IGN16  # a later instance (table) overwrote part of the person
    np.testing.assert_array_equal(sem, expected_obj)
    expected_part = np.where(expected_obj == 27, part.astype(np.int64), IGN16)
    np.testing.assert_array_equal(prt, expected_part)
    assert prt[2, 4] == 233 and prt[22, 31] == IGN16  # part 5 lies in the washer, not the person


def test_errors_name_the_file(tmp_path, pascal_record):
    record, _, part = pascal_record
    jpg = tmp_path / "broken.jpg"
    Image.fromarray(np.zeros((H, W, 3), np.uint8) + 90).save(jpg, quality=95)
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRecordError, match="broken.jpg"):
        _test_mapper()(dict(record, file_name=str(jpg)))
    with pytest.raises(BadRecordError, match="missing.png.*not found"):
        _test_mapper()(dict(record, file_name=str(tmp_path / "missing.png")))
    bad = part.copy()
    bad[0, 0] = 200
    path = _save(tmp_path / "bad_part.png", bad)
    with pytest.raises(BadRecordError, match=r"bad_part.png.*\[0, 116\).*200"):
        _test_mapper()(dict(record, sem_seg_file_name=path))
    with pytest.raises(BadRecordError, match="image is 40x30 .* record says 41x30"):
        _test_mapper()(dict(record, width=41, height=30))


def test_read_image_applies_exif_rotation(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert read_image(str(path), "RGB").shape == (20, 10, 3)
    assert read_image(str(path), "BGR").shape == (20, 10, 3)


# ----------------------------------------------------------------------------------------------
# PartImageNet
# ----------------------------------------------------------------------------------------------
PIN = get_part_dataset("partimagenet")


def _pin_mapper(is_train: bool, **kw) -> PartImageNetMapper:
    return PartImageNetMapper(
        is_train,
        augmentations=[ResizeShortestEdge(64, 128, "choice"), RandomFlip()],
        ignore_label=IGN16,
        size_divisibility=32 if is_train else -1,
        class_names=PIN.class_names,
        obj_classes=PIN.obj_classes,
        part_categories=PIN.part_categories,
        **kw,
    )


def _poly(cat, x0, y0, x1, y1):
    return {"category_id": cat, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}


def test_partimagenet_labels_crop_and_test_resolution(tmp_path):
    obj_name = "impala"
    obj_id = PIN.obj_classes.index(obj_name)
    record = {
        "file_name": _image(tmp_path, "big.png", h=40, w=50),
        "obj_class_id": obj_id,
        "obj_part_annotations": [_poly(0, 2, 1, 10, 5), _poly(1, 20, 20, 45, 38), _poly(3, 8, 3, 12, 6)],
    }
    head, body, tail = (PIN.class_names.index(f"impala's {p}") for p in ("head", "body", "tail"))
    expected_part = np.full((40, 50), IGN16)
    expected_part[1:5, 2:10] = head
    expected_part[20:38, 20:45] = body
    expected_part[3:6, 8:12] = tail  # later annotation overwrites the head
    src = np.asarray(Image.open(record["file_name"]))

    test_out = _pin_mapper(False)(record)  # test: original resolution, augmentations discarded
    assert test_out["image"].shape == (3, 40, 50)
    np.testing.assert_array_equal(test_out["image"].permute(1, 2, 0).numpy(), src)
    np.testing.assert_array_equal(test_out["obj_part_sem_seg"].numpy(), expected_part)
    np.testing.assert_array_equal(test_out["sem_seg"].numpy(), np.where(expected_part != IGN16, obj_id, IGN16))
    assert test_out["object_class"] == obj_id

    train_out = _pin_mapper(True)(record, AugRandom.from_seed(1))  # train: top-left 32x32 cut
    assert train_out["image"].shape == (3, 32, 32)
    np.testing.assert_array_equal(train_out["image"].permute(1, 2, 0).numpy(), src[:32, :32])
    np.testing.assert_array_equal(train_out["obj_part_sem_seg"].numpy(), expected_part[:32, :32])

    small = dict(record, file_name=_image(tmp_path, "small.png", h=10, w=20),
                 obj_part_annotations=[_poly(0, 0, 0, 4, 4)])
    padded = _pin_mapper(True)(small)
    assert padded["image"].shape == (3, 32, 32)
    assert torch.all(padded["image"][:, 10:, :] == 128) and torch.all(padded["image"][:, :, 20:] == 128)
    assert torch.all(padded["obj_part_sem_seg"][10:, :] == IGN16)
    assert padded["obj_part_sem_seg"][0, 0] == head


def test_partimagenet_part_names_maps_and_errors(tmp_path):
    img = _image(tmp_path, h=20, w=20)
    mapper = _pin_mapper(False)
    assert mapper.part_names[PIN.part_categories.index("Car Side Mirror")] == "side mirror"
    assert mapper.part_names[PIN.part_categories.index("Car Tier")] == "tier"
    with pytest.raises(BadRecordError, match="class \"impala's tier\" is not in the class list"):
        mapper({"file_name": img, "obj_class_name": "impala", "obj_part_annotations": [_poly(25, 0, 0, 5, 5)]})
    # obj_map / obj_part_map remap full ids to base ids; a novel object ends up all-ignore -> None
    base = [i for i, c in enumerate(PIN.class_names) if c.split("'s")[0] not in PIN.novel_obj_classes]
    obj_map = {PIN.obj_classes.index(o): i for i, o in enumerate(o for o in PIN.obj_classes if o not in PIN.novel_obj_classes)}
    train = _pin_mapper(False, obj_map=obj_map, obj_part_map={full: i for i, full in enumerate(base)})
    rec = {"file_name": img, "obj_class_name": "impala", "obj_part_annotations": [_poly(0, 0, 0, 5, 5)]}
    assert "impala" in PIN.novel_obj_classes
    assert train(rec) is None
    goose = next(o for o in PIN.obj_classes if o not in PIN.novel_obj_classes and f"{o}'s head" in PIN.class_names)
    out = train(dict(rec, obj_class_name=goose))
    assert out["obj_part_sem_seg"][0, 0] == base.index(PIN.class_names.index(f"{goose}'s head"))
    assert out["object_class"] == obj_map[PIN.obj_classes.index(goose)]
    with pytest.raises(BadRecordError, match="obj_class_name' or 'obj_class_id"):
        mapper({"file_name": img, "obj_part_annotations": []})


# ----------------------------------------------------------------------------------------------
# semantic (CAT-Seg) mapper and config wiring
# ----------------------------------------------------------------------------------------------
def test_semantic_mapper_train_and_test(tmp_path):
    gt = np.full((H, W), IGN16, np.uint16)
    gt[:, :10] = 846
    gt[:, 10:20] = 0
    record = {"file_name": _image(tmp_path), "sem_seg_file_name": _save(tmp_path / "gt.tif", gt)}  # A-847 style 16-bit TIFF
    train = SemanticMapper(True, augmentations=[RandomCrop("absolute", (16, 16))], ignore_label=IGN16,
                           size_divisibility=24, num_classes=847)
    out = train(record, AugRandom.from_seed(0))
    assert out["image"].shape == (3, 24, 24) and out["sem_seg"].shape == (24, 24)
    assert out["sem_seg"].dtype == torch.int64
    assert set(np.unique(out["sem_seg"].numpy())) <= {0, 846, IGN16}
    assert torch.all(out["sem_seg"][16:] == IGN16) and torch.all(out["image"][:, 16:] == 128)

    test = SemanticMapper(False, augmentations=[ResizeShortestEdge(60, 2560, "choice")], ignore_label=IGN16)
    out = test(record)
    assert out["image"].shape == (3, 60, 80)
    assert "sem_seg" not in out and out["sem_seg_file_name"] == record["sem_seg_file_name"]
    assert (out["height"], out["width"]) == (H, W)
    bad = SemanticMapper(True, augmentations=[], ignore_label=IGN16, num_classes=100)
    with pytest.raises(BadRecordError, match="846"):
        bad(record)


def test_build_mapper_from_official_configs():
    from partcatseg.config import setup_cfg

    cfg = setup_cfg("configs/zero_shot/partcatseg_voc.yaml", [])
    train = build_mapper(cfg, True)
    assert isinstance(train, ObjPartSemanticMapper)
    assert [type(a).__name__ for a in train.augmentations] == [
        "ResizeShortestEdge", "RandomCrop_CategoryAreaConstraint", "ColorAugSSD", "RandomFlip"]
    resize, crop = train.augmentations[:2]
    assert resize.short_edge_length == (384,) and resize.max_size == 768 and resize.sample_style == "choice"
    assert crop.crop_size == (384, 384) and crop.crop_type == "absolute" and crop.ignored_category == 255
    assert train.size_divisibility == 384 and train.ignore_label == 255
    assert (train.num_classes, train.num_obj_classes) == (116, 20)
    assert train.obj_map[19] == 14 and 2 not in train.obj_map  # bird is novel
    test = build_mapper(cfg, False)
    assert test.size_divisibility == -1 and test.obj_map is None and test.obj_part_map is None
    (r,) = test.augmentations
    assert (r.short_edge_length, r.max_size) == ((640, 640), 768)

    cfg = setup_cfg("configs/zero_shot/partcatseg_partimagenet_ood.yaml", [])
    ood = build_mapper(cfg, False)
    assert isinstance(ood, PartImageNetOODMapper)
    assert (len(ood.class_names), len(ood.obj_classes), ood.ignore_label) == (482, 128, 65535)

    cfg = setup_cfg("configs/catseg/vitb_384.yaml", [])
    sem = build_mapper(cfg, False, dataset_name="ade20k_full_sem_seg_freq_val_all")
    assert isinstance(sem, SemanticMapper) and sem.ignore_label == 65535 and sem.num_classes == 847
    (r,) = sem.augmentations
    assert (r.short_edge_length, r.max_size) == ((640, 640), 2560)
    assert build_mapper(cfg, True).augmentations[0].max_size == 1333
