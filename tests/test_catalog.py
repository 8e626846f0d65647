"""detectron2-style catalogs and the metadata of every official dataset name."""
from __future__ import annotations

import copy
import hashlib
import pickle

import numpy as np
import pytest

from partcatseg.data.catalog import (
    PART_DATASET_NAMES,
    SEMANTIC_DATASET_NAMES,
    DatasetCatalog,
    Metadata,
    MetadataCatalog,
    register_all_metadata,
)
from partcatseg.vocab import (
    TOY_DATASET_NAMES,
    Vocabulary,
    dataset_vocabulary,
    get_part_dataset,
    get_semantic_classes,
    register_dataset_vocabulary,
)


def _sha16(names) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- Metadata
def test_metadata_semantics():
    m = Metadata(name="toy")
    assert m.set(stuff_classes=["a", "b"], ignore_label=255) is m
    assert m.stuff_classes == ["a", "b"] and m.get("ignore_label") == 255 and m.get("nope", 7) == 7
    m.set(ignore_label=255)  # same value again is fine
    m.ignore_label = 255
    with pytest.raises(ValueError) as err:
        m.set(ignore_label=65535)
    assert "ignore_label" in str(err.value) and "toy" in str(err.value)
    with pytest.raises(AttributeError) as err:
        _ = m.thing_classes
    assert "'thing_classes'" in str(err.value) and "'toy'" in str(err.value) and "stuff_classes" in str(err.value)
    arr = np.arange(3)
    m.set(weights=arr)
    m.set(weights=np.arange(3))  # equal arrays do not conflict
    with pytest.raises(ValueError, match="weights"):
        m.set(weights=np.zeros(3))
    assert m.as_dict()["name"] == "toy" and set(m.as_dict()) == {"name", "stuff_classes", "ignore_label", "weights"}
    # copy / pickle keep working despite the custom __getattr__
    assert copy.deepcopy(m).stuff_classes == ["a", "b"]
    assert pickle.loads(pickle.dumps(m)).ignore_label == 255
    assert not hasattr(m, "missing")


# ---------------------------------------------------------------- DatasetCatalog
def test_dataset_catalog_semantics():
    cat = type(DatasetCatalog)()  # a private instance keeps the global one clean
    calls = []

    def load():
        calls.append(1)
        return [{"file_name": "a.jpg"}]

    cat.register("toy_train", load)
    assert cat.list() == ["toy_train"] and "toy_train" in cat
    assert cat.get("toy_train") == [{"file_name": "a.jpg"}]
    assert cat.get("toy_train") == [{"file_name": "a.jpg"}] and len(calls) == 2  # called on every get
    with pytest.raises(ValueError, match="'toy_train' is already registered"):
        cat.register("toy_train", load)
    with pytest.raises(TypeError, match="callable"):
        cat.register("toy_val", [1, 2])
    cat.register("toy_val", lambda: [])
    with pytest.raises(KeyError) as err:
        cat.get("toy_test")
    assert "toy_test" in str(err.value) and "toy_train" in str(err.value) and "toy_val" in str(err.value)
    cat.remove("toy_val")
    assert cat.list() == ["toy_train"]
    with pytest.raises(KeyError, match="toy_val"):
        cat.remove("toy_val")
    cat.clear()
    assert cat.list() == []


def test_global_dataset_catalog_register_and_remove():
    name = "test_catalog_tmp_dataset"
    DatasetCatalog.register(name, lambda: [{"x": 1}])
    try:
        assert DatasetCatalog.get(name) == [{"x": 1}]
    finally:
        DatasetCatalog.remove(name)
    assert name not in DatasetCatalog.list()


def test_metadata_catalog_semantics():
    cat = type(MetadataCatalog)()
    m = cat.get("new_set")
    assert isinstance(m, Metadata) and m.name == "new_set" and cat.get("new_set") is m
    assert cat.list() == ["new_set"]
    cat.remove("new_set")
    assert cat.list() == []
    with pytest.raises(ValueError, match="non-empty string"):
        cat.get("")


# ---------------------------------------------------------------- official metadata
BRIEF_PART_NAMES = [
    "voc_obj_part_sem_seg_train", "voc_obj_part_sem_seg_val", "voc_obj_part_sem_seg_train_obj_condition",
    "voc_obj_part_sem_seg_val_obj_condition", "voc_obj_part_sem_seg_train_few_shot",
    "ade_obj_part_sem_seg_train", "ade_obj_part_sem_seg_train_obj_condition", "ade_obj_part_sem_seg_val_obj_condition",
    "ade_obj_part_sem_seg_train_few_shot",
    "partimagenet_obj_part_sem_seg_train", "partimagenet_obj_part_sem_seg_train_obj_condition",
    "partimagenet_obj_part_sem_seg_val_obj_condition",
    "partimagenet_ood_obj_part_sem_seg_train", "partimagenet_ood_obj_part_sem_seg_val_obj_condition",
]
SEMANTIC = {  # name: (vocabulary, number of stuff classes, ignore label, evaluator)
    "coco_2017_train_stuff_all_sem_seg": ("coco_stuff_171", 171, 255, "sem_seg"),
    "coco_2017_test_stuff_all_sem_seg": ("coco_stuff_171", 171, 255, "sem_seg"),
    "ade20k_150_test_sem_seg": ("ade150", 150, 255, "sem_seg"),
    "ade20k_full_sem_seg_freq_val_all": ("ade847", 847, 65535, "sem_seg"),
    "voc_2012_test_sem_seg": ("voc20", 20, 255, "sem_seg"),
    "voc_2012_test_background_sem_seg": ("voc20", 21, 255, "sem_seg_background"),
    "context_59_test_sem_seg": ("pc59", 59, 255, "sem_seg"),
    "context_459_test_sem_seg": ("pc459", 459, 459, "sem_seg"),
}
# spec §7.6: (train vocabulary name, test vocabulary name, T1 train/test, T2 train/test)
SIZES = {
    "voc": ("voc_obj_part_sem_seg_train", "voc_obj_part_sem_seg_val_obj_condition", (53, 59), (75, 117)),
    "ade": ("ade_obj_part_sem_seg_train", "ade_obj_part_sem_seg_val_obj_condition", (117, 130), (177, 235)),
    "pin": ("partimagenet_obj_part_sem_seg_train", "partimagenet_obj_part_sem_seg_val_obj_condition", (39, 54), (93, 148)),
    "ood": ("partimagenet_ood_obj_part_sem_seg_train", "partimagenet_ood_obj_part_sem_seg_val_obj_condition",
            (123, 142), (411, 483)),
}


def test_every_official_name_is_registered():
    registered = set(MetadataCatalog.list())
    assert set(BRIEF_PART_NAMES) <= set(PART_DATASET_NAMES) <= registered
    assert set(SEMANTIC) == set(SEMANTIC_DATASET_NAMES) <= registered
    for name in PART_DATASET_NAMES + SEMANTIC_DATASET_NAMES:
        assert name in DatasetCatalog.list()  # every official split has a loader


def test_pascal_train_metadata():
    m = MetadataCatalog.get("voc_obj_part_sem_seg_train")
    assert len(m.stuff_classes) == 74 and _sha16(m.stuff_classes) == "769459499b56c81e"
    assert len(m.obj_classes) == 15 and "bird" not in m.obj_classes and "boat" in m.obj_classes
    assert m.ignore_label == 255 and m.evaluator_type == "sem_seg"
    assert m.obj_map == {0: 0, 1: 1, 3: 2, 4: 3, 5: 4, 7: 5, 8: 6, 9: 7, 10: 8, 12: 9, 14: 10, 15: 11, 17: 12,
                         18: 13, 19: 14}
    full = get_part_dataset("pascal_part_116").class_names
    assert len(m.obj_part_map) == 74
    assert all(full[k] == m.stuff_classes[v] for k, v in m.obj_part_map.items())
    assert m.obj_part_map[0] == 0 and 11 not in m.obj_part_map  # "bird's wing" is novel
    assert m.image_root.endswith("PascalPart116/images/train")
    assert m.sem_seg_root.endswith("PascalPart116/annotations_detectron2_part/train")


def test_pascal_test_metadata():
    m = MetadataCatalog.get("voc_obj_part_sem_seg_val_obj_condition")
    assert len(m.stuff_classes) == 116 and _sha16(m.stuff_classes) == "0f140cd407099db2"
    assert len(m.obj_classes) == 20 and _sha16(m.obj_classes) == "7d877f185c807bc5"
    assert len(m.obj_base_classes) == 15 and len(m.base_classes) == 74
    base = m.evaluation_set["base"]
    assert len(base) == 74 and [m.stuff_classes[i] for i in base] == m.base_classes
    assert sum(m.trainable_flag) == 74 and len(m.trainable_flag) == 116
    assert (len(m.obj_eval_classes), len(m.obj_eval_base_classes)) == (16, 11)
    assert [m.obj_eval_classes[i] for i in m.obj_evaluation_set["base"]] == m.obj_eval_base_classes
    assert len(m.part_classes) == 42 and "chainwheel" not in m.part_base_classes
    assert not hasattr(m, "obj_map") and not hasattr(m, "obj_part_map")
    few = MetadataCatalog.get("voc_obj_part_sem_seg_train_few_shot")
    assert len(few.stuff_classes) == 116 and few.evaluation_set == {"base": list(range(116))}
    assert few.trainable_flag == [1] * 116


@pytest.mark.parametrize(
    "prefix, key, n_full, n_base, n_obj, n_obj_base, sha_base",
    [
        ("ade_obj_part_sem_seg", "ade_part_234", 234, 176, 44, 33, "9d875c94844c3405"),
        ("partimagenet_obj_part_sem_seg", "partimagenet", 147, 92, 40, 25, "1e4b8cb68f2bef5e"),
        ("partimagenet_ood_obj_part_sem_seg", "partimagenet_ood", 482, 410, 128, 109, "985acd6a5d5d0abc"),
    ],
)
def test_16bit_part_datasets(prefix, key, n_full, n_base, n_obj, n_obj_base, sha_base):
    ds = get_part_dataset(key)
    for suffix in ("_train", "_train_obj_condition"):
        m = MetadataCatalog.get(prefix + suffix)
        assert len(m.stuff_classes) == n_base and _sha16(m.stuff_classes) == sha_base
        assert len(m.obj_classes) == n_obj_base and len(m.obj_map) == n_obj_base and len(m.obj_part_map) == n_base
        assert m.ignore_label == 65535 and m.evaluator_type == "sem_seg"
    m = MetadataCatalog.get(prefix + "_val_obj_condition")
    assert list(m.stuff_classes) == list(ds.class_names) and len(m.stuff_classes) == n_full
    assert list(m.obj_classes) == list(ds.obj_classes) and len(m.obj_classes) == n_obj
    assert len(m.evaluation_set["base"]) == n_base and m.base_classes == ds.base_class_names
    assert m.obj_base_classes == ds.obj_base_classes and m.ignore_label == 65535
    if key != "ade_part_234":
        assert len(m.part_categories) == 40
        assert m.part_categories[26] == {"id": 26, "name": "Car Side Mirror", "supercategory": "Car"}


def test_semantic_metadata():
    for name, (vocab, n, ignore, evaluator) in SEMANTIC.items():
        m = MetadataCatalog.get(name)
        assert len(m.stuff_classes) == n and m.ignore_label == ignore and m.evaluator_type == evaluator, name
        if evaluator == "sem_seg":
            assert m.stuff_classes == get_semantic_classes(vocab), name
    bg = MetadataCatalog.get("voc_2012_test_background_sem_seg")
    assert bg.stuff_classes == get_semantic_classes("voc20") + ["background"]
    assert bg.vocabulary == get_semantic_classes("voc20b") and len(bg.vocabulary) == 59
    assert bg.sem_seg_root.endswith("VOCdevkit/VOC2012/annotations_detectron2_bg/val")
    coco = MetadataCatalog.get("coco_2017_test_stuff_all_sem_seg")
    mapping = coco.stuff_dataset_id_to_contiguous_id
    assert len(mapping) == 171 and mapping[1] == 0 and mapping[13] == 11 and mapping[182] == 170
    assert MetadataCatalog.get("ade20k_150_test_sem_seg").stuff_classes[7] == "bed "
    assert MetadataCatalog.get("ade20k_full_sem_seg_freq_val_all").gt_ext == "tif"
    assert MetadataCatalog.get("context_459_test_sem_seg").gt_ext == "tif"


def test_register_all_metadata_is_idempotent_and_refuses_silent_changes():
    before = MetadataCatalog.get("voc_obj_part_sem_seg_val").as_dict()
    register_all_metadata()
    assert MetadataCatalog.get("voc_obj_part_sem_seg_val").as_dict() == before
    with pytest.raises(ValueError, match="image_root"):
        register_all_metadata(root="/somewhere/else")


# ---------------------------------------------------------------- dataset vocabularies
@pytest.mark.parametrize("dataset", sorted(SIZES))
def test_part_vocabulary_for_matches_spec_sizes(dataset):
    train_name, test_name, t1, t2 = SIZES[dataset]
    train, test = dataset_vocabulary(train_name), dataset_vocabulary(test_name)
    assert (train.num_text_classes_stage1, test.num_text_classes_stage1) == t1
    assert (train.num_text_classes_stage2, test.num_text_classes_stage2) == t2
    assert list(test.classes) == list(MetadataCatalog.get(test_name).stuff_classes)


def test_dataset_vocabulary_errors_and_registered_metadata():
    with pytest.raises(KeyError, match="Dataset 'voc_part_train' has no vocabulary"):
        dataset_vocabulary("voc_part_train")
    semantic = dataset_vocabulary("ade20k_150_test_sem_seg")
    assert not semantic.has_parts and len(semantic) == 150
    assert len(dataset_vocabulary("voc_2012_test_background_sem_seg")) == 59  # the voc20b query vocabulary
    # a dataset registered by its metadata gives models its vocabulary (data -> vocab provider)
    MetadataCatalog.get("my_parts_val").set(stuff_classes=["robot's arm", "robot's head"], obj_classes=["cup", "robot"])
    try:
        vocab = dataset_vocabulary("my_parts_val")
        assert vocab.has_parts and vocab.classes == ["robot's arm", "robot's head"] and vocab.objects == ["cup", "robot"]
    finally:
        MetadataCatalog.remove("my_parts_val")
    register_dataset_vocabulary("my_words", Vocabulary(["sky", "sea"]))
    assert dataset_vocabulary("my_words").classes == ["sky", "sea"]
    with pytest.raises(ValueError, match="built-in dataset"):
        register_dataset_vocabulary("voc_obj_part_sem_seg_train", Vocabulary(["sky"]))


@pytest.mark.parametrize("name", PART_DATASET_NAMES + TOY_DATASET_NAMES)
def test_vocabulary_registry_equals_the_catalog_metadata(name):
    meta, vocab = MetadataCatalog.get(name), dataset_vocabulary(name)
    assert vocab.classes == list(meta.stuff_classes) and vocab.objects == list(meta.obj_classes)
