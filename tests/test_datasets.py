"""Dataset registry and loaders on generated data: toy set, and tiny fake Pascal / ADE / PartImageNet /
CAT-Seg trees built in tmp_path with the official layouts."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partcatseg.data.catalog import DatasetCatalog, MetadataCatalog, dataset_vocabulary_key, register_all_metadata
from partcatseg.data.datasets import (
    DatasetFilesError,
    current_dataset_root,
    dataset_root,
    imagenet_synset_names,
    make_toy_dataset,
    object_class_id,
)
from partcatseg.data.datasets.check import check_dataset, has_failures
from partcatseg.data.datasets.common import collect_mask_labels, replace_path_component
from partcatseg.data.datasets.partimagenet_prepare import partimagenet_class_map, preprocess_partimagenet
from partcatseg.data.datasets.semantic_prepare import (
    ade847_id_map,
    coco_stuff_id_map,
    pc59_id_map,
    prepare_ade150,
    prepare_ade847,
    prepare_coco_stuff,
    prepare_pc59,
    prepare_pc459,
    prepare_voc,
)
from partcatseg.vocab import get_part_dataset


def _jpg(path: Path, h: int = 8, w: int = 10, colour=(40, 80, 120)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, quality=90)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


TOY = get_part_dataset("toy_part")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_root")
    make_toy_dataset(str(root / "ToyPart"), seed=0, num_train=8, num_val=8, size=48, progress=False)
    return root


# ------------------------------------------------------------------------------------------- toy
def test_toy_is_deterministic_and_seed_dependent(tmp_path):
    kw = dict(num_train=3, num_val=2, size=40, progress=False)
    make_toy_dataset(str(tmp_path / "a"), seed=3, **kw)
    make_toy_dataset(str(tmp_path / "b"), seed=3, **kw)
    make_toy_dataset(str(tmp_path / "c"), seed=4, **kw)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 3 * 5 + 2 + 1  # 3 files per image, 2 label-count jsons, toy_meta.json
    assert a["images/train/train_000000.jpg"] != c["images/train/train_000000.jpg"]
    with pytest.raises(FileExistsError, match="overwrite"):
        make_toy_dataset(str(tmp_path / "a"), seed=3, **kw)
    make_toy_dataset(str(tmp_path / "a"), seed=4, overwrite=True, **kw)
    assert _digest(tmp_path / "a") == c


def test_toy_layout_and_labels(toy_root):
    d = toy_root / "ToyPart"
    novel = {TOY.obj_classes.index(o) for o in TOY.novel_obj_classes}
    partless = {TOY.obj_classes.index(o) for o in ("ball", "kite")}
    for split in ("train", "val"):
        counts = json.loads((d / "annotations_detectron2_part" / f"{split}_obj_label_count.json").read_text())
        assert sorted(counts) == [f"{split}_{i:06d}.png" for i in range(8)]
        seen = set()
        for name, ids in counts.items():
            img = Image.open(d / "images" / split / name.replace(".png", ".jpg"))
            part = np.asarray(Image.open(d / "annotations_detectron2_part" / split / name))
            obj = np.asarray(Image.open(d / "annotations_detectron2_obj" / split / name))
            assert img.size == (64, 48) and part.shape == obj.shape == (48, 64) and part.dtype == np.uint8
            assert ids == sorted(set(np.unique(obj).tolist()) - {255}) and 1 <= len(ids) <= 2
            assert set(np.unique(part).tolist()) - {255} <= set(range(len(TOY.class_names)))
            assert np.all(part[obj == 255] == 255)  # background is ignore in both maps
            for o in ids:
                parts_of_o = np.unique(part[obj == o])
                if o in partless:
                    assert parts_of_o.tolist() == [255]
                else:  # every labelled part pixel belongs to a part of that very object
                    names = {TOY.class_names[p].split("'s")[0] for p in parts_of_o if p != 255}
                    assert names == {TOY.obj_classes[o]}
            seen |= set(ids)
        if split == "train":
            assert not seen & novel, "novel objects must never appear in the training split"
        else:
            assert seen & novel


def test_toy_registry_records(toy_root):
    d = toy_root / "ToyPart"
    with dataset_root(str(toy_root)):
        assert current_dataset_root() == str(toy_root)
        train = DatasetCatalog.get("toy_obj_part_sem_seg_train")
        val = DatasetCatalog.get("toy_obj_part_sem_seg_val")
        cond = DatasetCatalog.get("toy_obj_part_sem_seg_val_obj_condition")
        meta = MetadataCatalog.get("toy_obj_part_sem_seg_train")
        assert meta.image_root == os.path.join(str(toy_root), "ToyPart", "images", "train")
        assert meta.stuff_classes == TOY.base_class_names and meta.ignore_label == 255
        assert MetadataCatalog.get("toy_obj_part_sem_seg_val").stuff_classes == list(TOY.class_names)
    assert (len(train), len(val)) == (8, 8)
    assert train[0] == {
        "file_name": str(d / "images/train/train_000000.jpg"),
        "sem_seg_file_name": str(d / "annotations_detectron2_part/train/train_000000.png"),
        "obj_sem_seg_file_name": str(d / "annotations_detectron2_obj/train/train_000000.png"),
    }
    counts = json.loads((d / "annotations_detectron2_part/val_obj_label_count.json").read_text())
    assert len(cond) == sum(len(v) for v in counts.values())
    expected = [(f"val_{i:06d}.png", c) for i in range(8) for c in counts[f"val_{i:06d}.png"]]
    assert [(os.path.basename(r["sem_seg_file_name"]), r["category_id"]) for r in cond] == expected
    assert list(cond[0]) == ["category_id", "file_name", "sem_seg_file_name", "obj_sem_seg_file_name"]
    # the root is restored afterwards
    assert MetadataCatalog.get("toy_obj_part_sem_seg_train").image_root == os.path.join(
        os.getenv("DETECTRON2_DATASETS", "datasets"), "ToyPart", "images", "train")
    register_all_metadata()  # still idempotent for the original root


def test_missing_split_errors_name_layout_and_command(tmp_path):
    with dataset_root(str(tmp_path)):
        with pytest.raises(DatasetFilesError) as err:
            DatasetCatalog.get("toy_obj_part_sem_seg_val")
        msg = str(err.value)
        assert os.path.join(str(tmp_path), "ToyPart", "images", "val") in msg
        assert f"python tools/make_toy_dataset.py --out {os.path.join(str(tmp_path), 'ToyPart')}" in msg
        assert "annotations_detectron2_obj/{train,val}/*.png" in msg
        for name, where, command in [
            ("voc_obj_part_sem_seg_val", "PascalPart116/images/val", "tar -xzf PascalPart116.tar.gz"),
            ("ade_obj_part_sem_seg_val_obj_condition", "ADE20KPart234/images/validation", "ADE20KPart234.tar.gz"),
            ("partimagenet_obj_part_sem_seg_train", "PartImageNet/images/train", "python tools/prepare_partimagenet.py"),
            ("context_459_test_sem_seg", "VOCdevkit/VOC2010/JPEGImages", "python tools/prepare_catseg_datasets.py pc459"),
            ("ade20k_full_sem_seg_freq_val_all", "ADE20K_2021_17_01/images_detectron2/validation",
             "python tools/prepare_catseg_datasets.py ade847"),
        ]:
            with pytest.raises(FileNotFoundError) as err:
                DatasetCatalog.get(name)
            assert os.path.join(str(tmp_path), where) in str(err.value) and command in str(err.value), name


# ------------------------------------------------------------------------------------------- Pascal
def _fake_pascal(root: Path) -> Path:
    d = root / "PascalPart116"
    part = np.full((8, 10), 255, np.uint8)
    part[2:5, 2:5] = 3
    obj = np.full((8, 10), 255, np.uint8)
    obj[1:6, 1:6] = 1
    for split, stems in (("train", ["2008_000001", "2008_000002", "2008_000003"]), ("val", ["2008_000010", "2008_000011"])):
        for s in stems:
            _jpg(d / "images" / split / f"{s}.jpg")
            _png(d / "annotations_detectron2_part" / split / f"{s}.png", part)
            _png(d / "annotations_detectron2_obj" / split / f"{s}.png", obj)
    _jpg(d / "images/val/2008_000099.jpg")  # an image without annotation
    (d / "images/val/._2008_000010.jpg").write_bytes(b"\0\0junk")  # macOS resource fork
    (d / "annotations_detectron2_part/val/._2008_000010.png").write_bytes(b"\0\0junk")
    _json(d / "annotations_detectron2_part/val_obj_label_count.json", {"2008_000010.png": [0, 14], "2008_000011.png": [3]})
    _json(d / "annotations_detectron2_part/train_obj_label_count.json",
          {"2008_000001.png": [1], "2008_000002.png": [], "2008_000003.png": [4, 7, 9]})
    _json(d / "train_16shot.json", [{"file_name": "datasets/PascalPart116/images/train/2008_000003.jpg"}])
    return d


def test_pascal_records_and_obj_condition(tmp_path, caplog):
    root = tmp_path / "my_parts"  # a root containing "part": the official str.replace would corrupt it
    d = _fake_pascal(root)
    with dataset_root(str(root)):
        with caplog.at_level(logging.WARNING):
            val = DatasetCatalog.get("voc_obj_part_sem_seg_val")
        cond = DatasetCatalog.get("voc_obj_part_sem_seg_val_obj_condition")
        train_cond = DatasetCatalog.get("voc_obj_part_sem_seg_train_obj_condition")
        few = DatasetCatalog.get("voc_obj_part_sem_seg_train_few_shot")
        assert len(MetadataCatalog.get("voc_obj_part_sem_seg_train").stuff_classes) == 74
    assert "intersection of 2" in caplog.text and "dropped 1 images without annotation" in caplog.text
    assert val == [
        {"file_name": str(d / f"images/val/{s}.jpg"),
         "sem_seg_file_name": str(d / f"annotations_detectron2_part/val/{s}.png"),
         "obj_sem_seg_file_name": str(d / f"annotations_detectron2_obj/val/{s}.png")}
        for s in ("2008_000010", "2008_000011")
    ]
    assert [(os.path.basename(r["file_name"]), r["category_id"]) for r in cond] == [
        ("2008_000010.jpg", 0), ("2008_000010.jpg", 14), ("2008_000011.jpg", 3)]
    assert cond[1] == {"category_id": 14, **val[0]}
    assert [r["category_id"] for r in train_cond] == [1, 4, 7, 9]  # an image with no objects yields no record
    assert [os.path.basename(r["file_name"]) for r in few] == ["2008_000003.jpg"]


def test_pascal_errors(tmp_path):
    d = _fake_pascal(tmp_path)
    (d / "annotations_detectron2_part/val_obj_label_count.json").unlink()
    (d / "annotations_detectron2_obj/train/2008_000002.png").unlink()
    with dataset_root(str(tmp_path)):
        with pytest.raises(DatasetFilesError) as err:
            DatasetCatalog.get("voc_obj_part_sem_seg_val_obj_condition")
        assert str(d / "annotations_detectron2_part/val_obj_label_count.json") in str(err.value)
        assert (f"python tools/collect_mask_labels.py {d / 'annotations_detectron2_obj/val'} "
                f"{d / 'annotations_detectron2_part/val_obj_label_count.json'}") in str(err.value)
        with pytest.raises(DatasetFilesError) as err:
            DatasetCatalog.get("voc_obj_part_sem_seg_train")
        assert "1 of 3 object annotation PNGs" in str(err.value)
        assert str(d / "annotations_detectron2_obj/train/2008_000002.png") in str(err.value)


def test_replace_path_component():
    p = "/data/parts/PascalPart116/annotations_detectron2_part/val/x_part.png"
    assert replace_path_component(p, "annotations_detectron2_part", "annotations_detectron2_obj") == \
        "/data/parts/PascalPart116/annotations_detectron2_obj/val/x_part.png"
    with pytest.raises(ValueError, match="no directory component"):
        replace_path_component("/a/b/c.png", "annotations_detectron2_part", "x")


# ------------------------------------------------------------------------------------------- ADE
ADE = get_part_dataset("ade_part_234")
A = {o: ADE.obj_classes.index(o) for o in ("airplane", "bench", "bus", "person", "chair", "fan", "desk")}


def _ann(i, img, cat, poly=(1, 1, 6, 1, 6, 5, 1, 5)):
    return {"id": i, "image_id": img, "category_id": cat, "iscrowd": 0, "bbox": [1, 1, 5, 4], "area": 20,
            "segmentation": [list(poly)]}


def _fake_ade(root: Path) -> Path:
    d = root / "ADE20KPart234"
    part = np.full((8, 10), 65535, np.uint16)
    part[2:4, 2:4] = 7
    for split, folder, n in (("train", "training", 3), ("val", "validation", 2)):
        images = []
        for i in range(1, n + 1):
            name = f"ADE_{split}_{i:08d}.jpg"
            _jpg(d / "images" / folder / name)
            _png(d / "annotations_detectron2_part" / folder / name.replace(".jpg", ".png"), part)
            images.append({"id": i, "file_name": name, "height": 8, "width": 10})
        if split == "train":
            anns = [_ann(1, 1, A["airplane"]), _ann(2, 1, A["bench"]), _ann(3, 2, A["bus"]),
                    _ann(4, 2, A["person"], poly=(1, 1, 5, 5)),  # 2-point polygon: dropped by the COCO loader
                    _ann(5, 3, A["person"])]
        else:
            anns = [_ann(1, 1, A["chair"]), _ann(2, 2, A["fan"]), _ann(3, 2, A["desk"])]
        _json(d / f"ade20k_instance_{split}.json", {"images": images, "annotations": anns,
                                                    "categories": [{"id": i, "name": o} for i, o in enumerate(ADE.obj_classes)]})
    _json(d / "train_16shot.json", [{"file_name": "whatever/ADE_train_00000002.jpg"}])
    return d


def test_ade_records(tmp_path):
    d = _fake_ade(tmp_path)
    with dataset_root(str(tmp_path)):
        train = DatasetCatalog.get("ade_obj_part_sem_seg_train")
        train_cond = DatasetCatalog.get("ade_obj_part_sem_seg_train_obj_condition")
        test = DatasetCatalog.get("ade_obj_part_sem_seg_val_obj_condition")
        few = DatasetCatalog.get("ade_obj_part_sem_seg_train_few_shot")
        few_test = DatasetCatalog.get("ade_obj_part_sem_seg_val_few_shot")
    assert len(train) == 3
    r = train[0]
    assert list(r) == ["file_name", "height", "width", "image_id", "obj_annotations", "obj_sem_seg_file_name",
                       "sem_seg_file_name"]
    assert r["file_name"] == str(d / "images/training/ADE_train_00000001.jpg")
    assert r["sem_seg_file_name"] == str(d / "annotations_detectron2_part/training/ADE_train_00000001.png")
    assert (r["height"], r["width"], r["image_id"], r["obj_sem_seg_file_name"]) == (8, 10, 1, "NA")
    assert r["obj_annotations"][0] == {"iscrowd": 0, "bbox": [1, 1, 5, 4], "category_id": A["airplane"],
                                       "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]], "bbox_mode": 1}
    assert [len(x["obj_annotations"]) for x in train] == [2, 1, 1]  # invalid polygon instance dropped
    assert [x["category_id"] for x in train_cond] == [A["airplane"], A["bench"], A["bus"], A["person"]]
    assert all(x["obj_annotations"] == [a] for x, a in zip(train_cond, [y for t in train for y in t["obj_annotations"]]))
    # test set: every val instance, then the *novel* training instances (bench, bus)
    assert [(os.path.basename(x["file_name"]), x["category_id"]) for x in test] == [
        ("ADE_val_00000001.jpg", A["chair"]), ("ADE_val_00000002.jpg", A["fan"]), ("ADE_val_00000002.jpg", A["desk"]),
        ("ADE_train_00000001.jpg", A["bench"]), ("ADE_train_00000002.jpg", A["bus"])]
    assert [x["category_id"] for x in few] == [A["bus"]]
    assert [x["category_id"] for x in few_test] == [A["chair"], A["fan"], A["desk"], A["bench"]]


def test_ade_missing_part_png(tmp_path):
    d = _fake_ade(tmp_path)
    (d / "annotations_detectron2_part/validation/ADE_val_00000002.png").unlink()
    with dataset_root(str(tmp_path)), pytest.raises(DatasetFilesError) as err:
        DatasetCatalog.get("ade_obj_part_sem_seg_val_obj_condition")
    assert "1 of 2 part annotation PNGs" in str(err.value)
    assert str(d / "annotations_detectron2_part/validation/ADE_val_00000002.png") in str(err.value)


# ------------------------------------------------------------------------------------------- PartImageNet
PIN = get_part_dataset("partimagenet")
GOLDFISH, TENCH, SHARK = "n01443537", "n01440764", "n01484850"  # base, novel, not a PartImageNet (Seg) object


def _fake_partimagenet_raw(root: Path) -> Path:
    d = root / "PartImageNet"
    mask = np.zeros((8, 10), np.uint8)
    for split, synsets in (("train", [GOLDFISH, TENCH, SHARK]), ("val", [GOLDFISH, TENCH, SHARK])):
        images, anns = [], []
        for k, wnid in enumerate(synsets):
            name = f"{wnid}_{100 + k}.JPEG"
            _jpg(d / "images" / split / name)
            _png(d / "annotations" / split / name.replace(".JPEG", ".png"), mask)
            images.append({"id": k + 1, "file_name": name, "height": 8, "width": 10})
            anns += [_ann(2 * k + 1, k + 1, 10), _ann(2 * k + 2, k + 1, 12, poly=(0, 0, 3, 0, 3, 3))]
        _json(d / "annotations" / split / f"{split}.json",
              {"images": images, "annotations": anns, "categories": [{"id": 0, "name": "x"}]})
    return d


def test_partimagenet_preprocess_and_records(tmp_path):
    d = _fake_partimagenet_raw(tmp_path)
    before = _digest(d)
    dry = preprocess_partimagenet(str(d), dry_run=True)
    assert _digest(d) == before
    assert dry["train"] == {"images_kept": 1, "images_removed": 2, "annotations_removed": 2}
    report = preprocess_partimagenet(str(d))
    assert report["val"]["images_kept"] == 2 and report["val"]["json_images"] == 2
    assert sorted(os.listdir(d / "images/train")) == [f"{GOLDFISH}_100.JPEG"]
    assert sorted(os.listdir(d / "images/val")) == [f"{TENCH}_101.JPEG", f"{GOLDFISH}_100.JPEG"]
    assert sorted(os.listdir(d / "annotations/val")) == [f"{TENCH}_101.png", f"{GOLDFISH}_100.png"]
    assert not (d / "annotations/train/train.json").exists() and (d / "train.json").exists()
    val_json = json.loads((d / "val.json").read_text())
    assert [im["file_name"] for im in val_json["images"]] == [f"{GOLDFISH}_100.JPEG", f"{TENCH}_101.JPEG"]
    assert len(val_json["annotations"]) == 4 and val_json["categories"] == partimagenet_class_map()
    assert preprocess_partimagenet(str(d)) == {  # idempotent
        "train": {"images_kept": 1, "images_removed": 0, "annotations_removed": 0, "json_images": 1, "json_annotations": 2},
        "val": {"images_kept": 2, "images_removed": 0, "annotations_removed": 0, "json_images": 2, "json_annotations": 4}}

    with dataset_root(str(tmp_path)):
        train = DatasetCatalog.get("partimagenet_obj_part_sem_seg_train")
        train_cond = DatasetCatalog.get("partimagenet_obj_part_sem_seg_train_obj_condition")
        test = DatasetCatalog.get("partimagenet_obj_part_sem_seg_val_obj_condition")
    assert len(train) == 1 and len(train_cond) == 2 and len(test) == 2
    r = train[0]
    assert list(r) == ["file_name", "height", "width", "image_id", "obj_class_id", "obj_part_annotations",
                       "obj_sem_seg_file_name", "sem_seg_file_name"]
    assert r["obj_class_id"] == PIN.obj_classes.index("goldfish") == 17
    assert r["sem_seg_file_name"] == str(d / f"annotations/train/{GOLDFISH}_100.png")
    assert [a["category_id"] for a in r["obj_part_annotations"]] == [10, 12]
    assert [x["category_id"] for x in train_cond] == [10, 12]  # official: the *part* category
    assert [x["obj_class_id"] for x in test] == [17, PIN.obj_classes.index("tench")]
    assert "category_id" not in test[0]


def test_partimagenet_synset_mapping_file_equals_packaged(tmp_path):
    table = imagenet_synset_names()
    loc = tmp_path / "LOC_synset_mapping.txt"
    loc.write_text("".join(f"{k} {v}, some synonym\n" for k, v in table.items()))
    d = _fake_partimagenet_raw(tmp_path)
    report = preprocess_partimagenet(str(d), str(loc))
    assert report["train"]["images_kept"] == 1 and report["val"]["images_kept"] == 2


def test_synset_table_and_object_ids():
    table = imagenet_synset_names()
    assert len(table) == 1000 and list(table)[:2] == ["n01440764", "n01443537"]
    assert (table["n01440764"], table["n02012849"], table["n03126707"], table["n03590841"]) == (
        "tench", "crane", "crane", "jack-o'-lantern")
    assert table["n15075141"] == "toilet tissue"
    for key in ("partimagenet", "partimagenet_ood"):
        objs = get_part_dataset(key).obj_classes
        found = sorted({object_class_id(f"{w}_1.JPEG", objs) for w, n in table.items() if n in objs})
        assert found == list(range(len(objs))), key  # every object is reachable from exactly its synsets
    with pytest.raises(KeyError, match="not one of the dataset's 40 objects"):
        object_class_id(f"{SHARK}_7.JPEG", PIN.obj_classes)


def test_partimagenet_class_map():
    cm = partimagenet_class_map()
    assert len(cm) == 143 and [c["id"] for c in cm] == list(range(129)) + list(range(133, 147))
    assert cm[0] == {"id": 0, "name": "impala's head", "superclass": "Quadruped"}
    assert cm[129] == {"id": 133, "name": "moped's body", "superclass": "Bicycle"}
    assert cm[-1] == {"id": 146, "name": "bald eagle's tail", "superclass": "Bird"}


# ------------------------------------------------------------------------------------------- CAT-Seg sets
def test_voc_preparation_and_records(tmp_path, caplog):
    voc = tmp_path / "VOCdevkit/VOC2012"
    for s in ("2007_000032", "2007_000033", "2007_000039"):
        _jpg(voc / "JPEGImages" / f"{s}.jpg")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n2007_000033\n")
    a = np.array([[0, 1, 20, 255], [15, 15, 0, 21]], np.uint8)
    _png(voc / "SegmentationClassAug/2007_000032.png", a)
    _png(voc / "SegmentationClassAug/2007_000033.png", np.zeros((2, 4), np.uint8))  # background only
    assert prepare_voc(str(tmp_path), progress=False) == (1, 2)
    assert np.array_equal(np.asarray(Image.open(voc / "annotations_detectron2/val/2007_000032.png")),
                          [[255, 0, 19, 255], [14, 14, 255, 255]])
    assert np.array_equal(np.asarray(Image.open(voc / "annotations_detectron2_bg/val/2007_000032.png")),
                          [[20, 0, 19, 255], [14, 14, 20, 255]])
    assert not (voc / "annotations_detectron2/val/2007_000033.png").exists()
    with dataset_root(str(tmp_path)), caplog.at_level(logging.WARNING):
        pas20 = DatasetCatalog.get("voc_2012_test_sem_seg")
        pas20b = DatasetCatalog.get("voc_2012_test_background_sem_seg")
    assert pas20 == [{"file_name": str(voc / "JPEGImages/2007_000032.jpg"),
                      "sem_seg_file_name": str(voc / "annotations_detectron2/val/2007_000032.png")}]
    assert [os.path.basename(r["file_name"]) for r in pas20b] == ["2007_000032.jpg", "2007_000033.jpg"]
    assert "dropped 2 images without annotation" in caplog.text


def test_ade150_and_coco_stuff_conversion(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    _png(ade / "annotations/validation/ADE_val_00000001.png", np.array([[0, 1, 150]], np.uint8))
    assert prepare_ade150(str(tmp_path), progress=False) == 1
    assert np.asarray(Image.open(ade / "annotations_detectron2/validation/ADE_val_00000001.png")).tolist() == [[255, 0, 149]]
    coco = tmp_path / "coco-stuff"
    # stuffthingmaps are 0-based COCO ids: 0 person, 11 (unused id 12 "street sign"), 12 stop sign, 181 wood
    lab = np.array([[0, 11, 12, 181, 255]], np.uint8)
    for split in ("train2017", "val2017"):
        _png(coco / "annotations" / split / "000000000139.png", lab)
    assert prepare_coco_stuff(str(tmp_path), progress=False) == 2
    out = np.asarray(Image.open(coco / "annotations_detectron2/val2017/000000000139.png"))
    assert out.tolist() == [[0, 255, 11, 170, 255]]
    m = coco_stuff_id_map()
    assert len(m) == 171 and m[0] == 0 and m[12] == 11 and 11 not in m and m[181] == 170


def test_pc59_pc459_conversion(tmp_path):
    import pycocotools.mask as mask_util
    import scipy.io

    voc = tmp_path / "VOCdevkit/VOC2010"
    m1 = np.zeros((4, 5), np.uint8, order="F")
    m1[:2, :2] = 1
    m2 = np.zeros((4, 5), np.uint8, order="F")
    m2[3, :] = 1
    rle = [mask_util.encode(np.asfortranarray(m)) for m in (m1, m2)]
    for r in rle:
        r["counts"] = r["counts"].decode()
    _json(voc / "trainval_merged.json", {
        "images": [{"image_id": 1, "file_name": "2008_000002.jpg", "height": 4, "width": 5, "phase": "val"},
                   {"image_id": 2, "file_name": "2008_000003.jpg", "height": 4, "width": 5, "phase": "train"}],
        "annos_segmentation": [{"image_id": 1, "category_id": 2, "segmentation": rle[0]},
                               {"image_id": 1, "category_id": 458, "segmentation": rle[1]},
                               {"image_id": 2, "category_id": 2, "segmentation": rle[0]}]})
    assert prepare_pc59(str(tmp_path), progress=False) == 1
    out = np.asarray(Image.open(voc / "annotations_detectron2/pc59_val/2008_000002.png"))
    assert out[0, 0] == 0 and out[3, 0] == 58 and out[2, 2] == 255  # 2 -> first class, 458 -> last, 0 -> ignore
    assert pc59_id_map()[0] == 255 and len(pc59_id_map()) == 60
    (voc / "trainval").mkdir()
    scipy.io.savemat(voc / "trainval/2008_000002.mat", {"LabelMap": np.array([[1, 2], [459, 3]], np.uint16)})
    (voc / "pascalcontext_val.txt").write_text("2008_000002\n2008_000404\n")  # the second has no .mat: skipped
    assert prepare_pc459(str(tmp_path), progress=False) == 1
    tif = np.asarray(Image.open(voc / "annotations_detectron2/pc459_val/2008_000002.tif"))
    assert tif.tolist() == [[0, 1], [458, 2]] and tif.dtype == np.uint16
    _jpg(voc / "JPEGImages/2008_000002.jpg")
    with dataset_root(str(tmp_path)):
        assert len(DatasetCatalog.get("context_459_test_sem_seg")) == 1
        assert len(DatasetCatalog.get("context_59_test_sem_seg")) == 1


def test_ade847_conversion(tmp_path):
    import pickle

    base = tmp_path / "ADE20K_2021_17_01"
    folder = "ADE20K_2021_17_01/images/ADE/validation/x"
    ids = ade847_id_map()
    assert len(ids) == 847 and ids[2978] == 0 and ids[3148] == 846 and ids[643] == 258
    seg = np.zeros((520, 600, 3), np.uint8)  # object id = R/10*256 + G
    seg[:, :300] = (110, 162, 0)  # 11*256+162 = 2978 "wall" -> 0
    seg[:, 300:] = (120, 84, 0)  # 12*256+84 = 3156 "alga" -> 358
    seg[:10, :10] = (0, 5, 0)  # id 5: not an A-847 class -> 65535
    (tmp_path / folder).mkdir(parents=True)
    Image.fromarray(seg).save(tmp_path / folder / "ADE_val_00000001_seg.png")
    _jpg(tmp_path / folder / "ADE_val_00000001.jpg", h=520, w=600)
    _jpg(tmp_path / folder / "ADE_train_00000001.jpg")
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": [folder, folder], "filename": ["ADE_val_00000001.jpg", "ADE_train_00000001.jpg"]}, f)
    assert prepare_ade847(str(tmp_path), progress=False) == 1
    img = Image.open(base / "images_detectron2/validation/ADE_val_00000001.jpg")
    lab = np.asarray(Image.open(base / "annotations_detectron2/validation/ADE_val_00000001.tif"))
    assert img.size == (591, 512) and lab.shape == (512, 591) and lab.dtype == np.uint16  # round(600/520*512)
    assert lab[100, 100] == 0 and lab[100, 500] == 358 and lab[0, 0] == 65535
    assert not (base / "annotations_detectron2/training/ADE_train_00000001.tif").exists()
    with dataset_root(str(tmp_path)):
        assert len(DatasetCatalog.get("ade20k_full_sem_seg_freq_val_all")) == 1


# ------------------------------------------------------------------------------------------- checks, labels
def test_check_dataset_passes_on_toy_and_catches_corruption(tmp_path):
    make_toy_dataset(str(tmp_path / "ToyPart"), seed=1, num_train=2, num_val=3, size=40, progress=False)
    with dataset_root(str(tmp_path)):
        ok = check_dataset("toy_obj_part_sem_seg_val_obj_condition", progress=False)
        assert not has_failures(ok), ok
        assert {r.check for r in ok} >= {"records", "images decode", "part label range", "object label range",
                                         "obj-condition objects", "image/annotation pairing"}
        jpg = tmp_path / "ToyPart/images/val/val_000001.jpg"
        jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])  # truncated JPEG
        png = tmp_path / "ToyPart/annotations_detectron2_part/val/val_000002.png"
        lab = np.asarray(Image.open(png)).copy()
        lab[0, 0] = 100  # 16 classes: 100 is neither a class nor the ignore label
        Image.fromarray(lab).save(png)
        res = {r.check: r for r in check_dataset("toy_obj_part_sem_seg_val", progress=False)}
        limited = {r.check: r for r in check_dataset("toy_obj_part_sem_seg_val", max_records=1, progress=False)}
    assert res["images decode"].status == "FAIL" and str(jpg) in res["images decode"].detail
    assert "truncated" in res["images decode"].detail
    assert res["part label range"].status == "FAIL" and "values [100]" in res["part label range"].detail
    assert res["object label range"].status == "OK" and res["records"].detail == "3 records, 3 images"
    assert limited["images decode"].status == "OK" and "first 1 records" in limited["images decode"].detail


def test_collect_mask_labels(tmp_path):
    _png(tmp_path / "gt/b.png", np.array([[255, 3], [3, 0]], np.uint8))
    _png(tmp_path / "gt/a.png", np.array([[255, 255]], np.uint8))
    _png(tmp_path / "gt/sub/c.png", np.array([[1]], np.uint8))  # not recursive
    (tmp_path / "gt/._b.png").write_bytes(b"junk")
    out = tmp_path / "out/count.json"
    res = collect_mask_labels(str(tmp_path / "gt"), str(out), progress=False)
    assert res == {"a.png": [], "b.png": [0, 3]} and json.loads(out.read_text()) == res
    assert collect_mask_labels(str(tmp_path / "gt"), ignore=(255, 0), num_workers=2, progress=False) == {
        "a.png": [], "b.png": [3]}
    with pytest.raises(FileNotFoundError, match="nope"):
        collect_mask_labels(str(tmp_path / "nope"))


def test_dataset_vocabulary_key():
    assert dataset_vocabulary_key("voc_obj_part_sem_seg_val_obj_condition") == "pascal_part_116"
    assert dataset_vocabulary_key("toy_obj_part_sem_seg_train") == "toy_part"
    assert dataset_vocabulary_key("context_459_test_sem_seg") == "pc459"
    with pytest.raises(KeyError, match="not a built-in dataset"):
        dataset_vocabulary_key("my_set")
