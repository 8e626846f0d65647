"""Tests for partcatseg.config: defaults, shipped official YAMLs, _BASE_ chains, error quality."""
from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import pytest
from fvcore.common.config import CfgNode as FvCfgNode

from partcatseg.config import (
    CfgNode,
    ConfigError,
    ConfigFileNotFoundError,
    ConfigTypeError,
    UnknownKeyError,
    get_cfg,
    load_cfg,
    read_config_chain,
    resolve_catseg_variant,
    resolve_device,
    resolve_text_cache_dir,
    setup_cfg,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# sha256 of the official files as shipped (byte-identical to the upstream repositories).
OFFICIAL_SHA256 = {
    "base_partcatseg_config.yaml": "e5c54fc8c9d79d2e0ace1778f33b438e8625307476f64e6cd721fded4902e20c",
    "base_catseg_config.yaml": "8711149c883d16caf9b81653ccc4579134b22588e426feee66b65007936b8af0",
    "zero_shot/catseg_ade.yaml": "277870880652e93a09f3050fbbd39ddba6ae936bc2d13a642b85705e0366c57b",
    "zero_shot/catseg_partimagenet.yaml": "c96717f118bb5b1f662987f9b3d30b9a41bf7c7fd465af36af6e745b27a072e4",
    "zero_shot/catseg_partimagenet_ood.yaml": "0179a70ae0c9e4f7664dd350b0e474c1fe36d3db640ad0191db3681a322b0fde",
    "zero_shot/catseg_voc.yaml": "57c2ac808f1399a7f0f73225d610e2657e202bb85cb29c0da81d7584c571a2c2",
    "zero_shot/partcatseg_ade.yaml": "85101f71ebe838118aa47c9b3c6cdd3d1ef9107977c5cb4f0f2dcaf423af5961",
    "zero_shot/partcatseg_partimagenet.yaml": "098847902298ee4d010a935a0d4033b6bd69a3609b0c06dd69d3db20b764fdba",
    "zero_shot/partcatseg_partimagenet_ood.yaml": "8b1e863091b6e2629e9be7460ad1282771969469b4ef57d42db9019ae1a3342e",
    "zero_shot/partcatseg_voc.yaml": "20fc39f17ba9492d2cb3ef780e5dc0adcbf95d652072dcead741172d6baaea83",
    "catseg/config.yaml": "c80e971a1d4ca43106df0a707b338a4602d7aed1cf3c8f6421d92e6056b40476",
    "catseg/vitb_384.yaml": "490e41316e64211031a194de1603272fc9a76d145b1267dfa277883038a206f9",
    "catseg/vitl_336.yaml": "0fdce42ed78ac68dc0648b95676a0d8475c00434947b06445ddb6974294b0dc6",
}
ALL_SHIPPED = sorted(
    os.path.relpath(p, CONFIGS) for p in glob.glob(str(CONFIGS / "**" / "*.yaml"), recursive=True)
)


def _load(rel: str) -> CfgNode:
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / rel))
    return cfg


def _plain(node):
    """Nested plain dicts/lists, so configs from different node classes compare by value."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- shipped files
def test_official_files_present_and_unmodified():
    for rel, digest in OFFICIAL_SHA256.items():
        data = (CONFIGS / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"configs/{rel} differs from the official file"


@pytest.mark.parametrize("rel", ALL_SHIPPED)
def test_every_shipped_yaml_loads(rel):
    cfg = _load(rel)
    assert cfg.MODEL.META_ARCHITECTURE in ("CATSeg", "PartCATSeg", "PartCLIPSeg")


@pytest.mark.parametrize("rel", sorted(OFFICIAL_SHA256))
def test_loading_matches_fvcore_reference_merge(rel):
    """Our layered, validated merge yields exactly what fvcore's own _BASE_ merge yields."""
    ours = _load(rel)
    reference = FvCfgNode(_plain_dict_tree(get_cfg()))
    reference.merge_from_file(str(CONFIGS / rel))
    assert _plain(ours) == _plain(reference)


def _plain_dict_tree(node):
    return {k: _plain_dict_tree(v) for k, v in node.items()} if isinstance(node, dict) else node


def test_partcatseg_voc_resolved_values():
    cfg = _load("zero_shot/partcatseg_voc.yaml")
    assert cfg.SEED == 12345678
    assert cfg.MODEL.META_ARCHITECTURE == "PartCATSeg"
    assert cfg.MODEL.BACKBONE.NAME == "DINOv2Backbone"
    assert cfg.MODEL.BACKBONE.FREEZE == 0
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0  # from the base config
    assert cfg.MODEL.WEIGHTS == "pretrain_weights/model_final_base.pth"
    assert cfg.DATASETS.TRAIN == ("voc_obj_part_sem_seg_train",)
    assert cfg.DATASETS.TEST[0] == "voc_obj_part_sem_seg_val_obj_condition"
    head = cfg.MODEL.SEM_SEG_HEAD
    assert head.NAME == "PartCATSegHead"
    assert head.CLIP_FINETUNE == ""
    assert head.IGNORE_VALUE == 255
    assert head.NUM_CLASSES == 74
    assert head.BG_ON is True
    assert head.CLIP_PRETRAINED == "ViT-B/16"
    assert head.APPEARANCE_GUIDANCE_DIM == 384
    assert head.DECODER_GUIDANCE_DIMS == [384, 384]
    assert head.NUM_LAYERS == 2 and head.POOLING_SIZES == [2, 2]
    assert cfg.MODEL.PROMPT_ENSEMBLE_TYPE == "imagenet"
    assert cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY == 32
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
    assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.MODEL.CLIP_PIXEL_MEAN == [122.7709383, 116.7460125, 104.09373615]
    assert cfg.MODEL.CLIP_PIXEL_STD == [68.5005327, 66.6321579, 70.3231630]
    solver = cfg.SOLVER
    assert solver.CLIP_GRADIENTS.ENABLED is True
    assert solver.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert solver.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert solver.OPTIMIZER == "ADAMW" and solver.LR_SCHEDULER_NAME == "WarmupCosineLR"
    assert solver.BASE_LR == 0.0002 and solver.BASE_LR_END == 0.0
    assert solver.WARMUP_ITERS == 0 and solver.WARMUP_FACTOR == 1.0
    assert solver.IMS_PER_BATCH == 4 and solver.MAX_ITER == 20000 and solver.CHECKPOINT_PERIOD == 1000
    assert solver.BACKBONE_MULTIPLIER == 0.01 and solver.WEIGHT_DECAY == 0.0001
    assert cfg.INPUT.DATASET_MAPPER_NAME == "obj_part_semantic"
    assert cfg.INPUT.MIN_SIZE_TRAIN == (384,)
    assert cfg.INPUT.MAX_SIZE_TRAIN == 768 and cfg.INPUT.MAX_SIZE_TEST == 768 and cfg.INPUT.MIN_SIZE_TEST == 640
    assert cfg.INPUT.CROP.ENABLED is True and cfg.INPUT.CROP.TYPE == "absolute"
    assert cfg.INPUT.CROP.SIZE == [384, 384] and all(type(v) is int for v in cfg.INPUT.CROP.SIZE)
    assert cfg.INPUT.SIZE_DIVISIBILITY == 384 and cfg.INPUT.COLOR_AUG_SSD is True
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.DATALOADER.NUM_WORKERS == 4
    assert cfg.TEST.EVAL_PERIOD == 1000 and cfg.TEST.VISUALIZE is True and cfg.TEST.SLIDING_WINDOW is False
    assert cfg.OUTPUT_DIR == "output/partcatseg_voc"
    assert cfg.CUDNN_BENCHMARK is True


@pytest.mark.parametrize(
    "name, ignore, ncls, mapper, out",
    [
        ("ade", 65535, 176, "obj_part_semantic", "output/partcatseg_ade"),
        ("partimagenet", 65535, 40, "partimagenet", "output/partcatseg_partimagenet"),
        ("partimagenet_ood", 65535, 40, "partimagenet_ood", "output/partcatseg_partimagenet_ood_split"),
    ],
)
def test_other_partcatseg_configs(name, ignore, ncls, mapper, out):
    cfg = _load(f"zero_shot/partcatseg_{name}.yaml")
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == ignore
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == ncls
    assert cfg.INPUT.DATASET_MAPPER_NAME == mapper
    assert cfg.OUTPUT_DIR == out
    prefix = {"ade": "ade", "partimagenet": "partimagenet", "partimagenet_ood": "partimagenet_ood"}[name]
    assert cfg.DATASETS.TEST == (f"{prefix}_obj_part_sem_seg_val_obj_condition",)


def test_catseg_cvpr_vitb_384():
    cfg = _load("catseg/vitb_384.yaml")
    head = cfg.MODEL.SEM_SEG_HEAD
    assert cfg.MODEL.PROMPT_ENSEMBLE_TYPE == "single"
    assert head.DECODER_GUIDANCE_DIMS == [256, 128]
    assert head.CLIP_PRETRAINED == "ViT-B/16"
    assert head.TEXT_GUIDANCE_DIM == 512 and head.APPEARANCE_GUIDANCE_DIM == 512
    assert head.NUM_LAYERS == 2 and head.POOLING_SIZES == [2, 2]
    assert head.CLIP_FINETUNE == "attention"
    assert head.TRAIN_CLASS_JSON == "datasets/coco.json" and head.TEST_CLASS_JSON == "datasets/coco.json"
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.0 and cfg.SOLVER.CLIP_MULTIPLIER == 0.01
    assert cfg.SOLVER.MAX_ITER == 80000
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01  # inherited from config.yaml
    assert cfg.INPUT.MAX_SIZE_TEST == 2560  # inherited from config.yaml
    assert cfg.INPUT.MAX_SIZE_TRAIN == 1333  # detectron2 default, never overridden
    assert cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY == 32
    assert cfg.TEST.SLIDING_WINDOW is False
    assert resolve_catseg_variant(cfg) == "cvpr2024"


def test_catseg_cvpr_vitl_336():
    cfg = _load("catseg/vitl_336.yaml")
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED == "ViT-L/14@336px"
    assert cfg.MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM == 768
    assert cfg.MODEL.PROMPT_ENSEMBLE_TYPE == "single"


def test_partcatseg_repo_catseg_baselines():
    voc = _load("zero_shot/catseg_voc.yaml")
    assert voc.MODEL.BACKBONE.NAME == "DINOv2Backbone"
    assert resolve_catseg_variant(voc) == "partcatseg_baseline"
    assert voc.MODEL.RESNETS.STEM_TYPE == "basic" and voc.MODEL.RESNETS.DEPTH == 101
    ade = _load("zero_shot/catseg_ade.yaml")
    assert ade.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    assert resolve_catseg_variant(ade) == "partcatseg_baseline"  # ResNet guidance + background class
    assert ade.MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_DIMS == [512, 256]
    assert ade.MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_DIM == 1024


# --------------------------------------------------------------------------- defaults
def test_defaults_fidelity_and_framework_keys():
    cfg = get_cfg()
    assert cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY == 32
    assert cfg.MODEL.CLIP_PIXEL_MEAN == [122.7709383, 116.7460125, 104.09373615]
    assert cfg.MODEL.CLIP_PIXEL_STD == [68.5005327, 66.6321579, 70.3231630]
    assert cfg.MODEL.PROMPT_ENSEMBLE_TYPE == "single" and cfg.MODEL.PROMPT_ENSEMBLE is False
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_FINETUNE == "attention"
    assert cfg.MODEL.SEM_SEG_HEAD.BG_ON is False
    assert cfg.MODEL.SEM_SEG_HEAD.POOLING_SIZES == [6, 6] and cfg.MODEL.SEM_SEG_HEAD.NUM_LAYERS == 4
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1 and cfg.SOLVER.CLIP_MULTIPLIER == 0.01
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(0.001) and cfg.SOLVER.WEIGHT_DECAY_EMBED == 0.0
    assert cfg.SOLVER.POLY_LR_POWER == 0.9
    assert cfg.INPUT.SIZE_DIVISIBILITY == -1 and cfg.INPUT.COLOR_AUG_SSD is False
    assert cfg.INPUT.DATASET_MAPPER_NAME == "mask_former_semantic"
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0
    assert cfg.DATASETS.VAL_ALL == ("coco_2017_val_all_stuff_sem_seg",)
    assert cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    assert cfg.TEST.DENSE_CRF is False and cfg.TEST.VISUALIZE is False and cfg.TEST.SLIDING_WINDOW is False
    assert cfg.MODEL.SWIN.QK_SCALE is None
    # framework section
    assert cfg.MODEL.DEVICE == "auto"
    assert cfg.MODEL.CATSEG_VARIANT == "auto"
    assert cfg.MODEL.CLIP_ARCH == ""
    assert cfg.MODEL.DINO_ARCH == "vit_small_patch14_dinov2" and cfg.MODEL.DINO_INPUT_SIZE == 448
    assert cfg.MODEL.TEXT_CACHE_DIR == "" and cfg.MODEL.TEXT_FP16 is False
    assert cfg.TEST.CLASS_CHUNK == 0 and cfg.TEST.SKIP_BAD_RECORDS is False
    assert cfg.SOLVER.AMP.ENABLED is False and cfg.SOLVER.AMP.DTYPE == "bf16"


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 5.0
    a.MODEL.PIXEL_MEAN.append(1.0)
    assert b.SOLVER.BASE_LR == 0.001 and len(b.MODEL.PIXEL_MEAN) == 3
    assert get_cfg().SOLVER.BASE_LR == 0.001
    assert isinstance(a, CfgNode) and isinstance(a.MODEL.SEM_SEG_HEAD, CfgNode)


def test_dump_round_trip(tmp_path):
    cfg = _load("zero_shot/partcatseg_ade.yaml")
    dumped = _write(tmp_path / "dumped.yaml", cfg.dump())
    again = get_cfg()
    again.merge_from_file(dumped)
    assert _plain(again) == _plain(cfg)


# --------------------------------------------------------------------------- _BASE_ chains
def test_base_chain_relative_to_including_file(tmp_path):
    _write(tmp_path / "root.yaml", "SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\nSEED: 1\n")
    _write(tmp_path / "mid" / "mid.yaml", "_BASE_: ../root.yaml\nSOLVER:\n  MAX_ITER: 20\nSEED: 2\n")
    leaf = _write(tmp_path / "mid" / "sub" / "leaf.yaml", "_BASE_: ../mid.yaml\nSEED: 3\n")
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SEED) == (0.5, 20, 3)
    files = [os.path.basename(f) for f, _ in read_config_chain(leaf)]
    assert files == ["root.yaml", "mid.yaml", "leaf.yaml"]


def test_base_list_applied_in_order(tmp_path):
    _write(tmp_path / "a.yaml", "SEED: 1\nOUTPUT_DIR: a\n")
    _write(tmp_path / "b.yaml", "SEED: 2\n")
    leaf = _write(tmp_path / "c.yaml", "_BASE_: [a.yaml, b.yaml]\n")
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert cfg.SEED == 2 and cfg.OUTPUT_DIR == "a"


def test_missing_base_names_including_file_and_missing_path(tmp_path):
    leaf = _write(tmp_path / "leaf.yaml", "_BASE_: nowhere/missing_base.yaml\nSEED: 1\n")
    with pytest.raises(ConfigFileNotFoundError) as exc:
        get_cfg().merge_from_file(leaf)
    msg = str(exc.value)
    assert leaf in msg
    assert "nowhere/missing_base.yaml" in msg
    assert str(tmp_path / "nowhere" / "missing_base.yaml") in msg
    assert isinstance(exc.value, FileNotFoundError)


def test_missing_top_level_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigFileNotFoundError, match="nope.yaml"):
        get_cfg().merge_from_file(missing)


def test_base_cycle_is_reported(tmp_path):
    _write(tmp_path / "x.yaml", "_BASE_: y.yaml\n")
    _write(tmp_path / "y.yaml", "_BASE_: x.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle.*x\.yaml -> .*y\.yaml -> .*x\.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "x.yaml"))


def test_nested_base_key_rejected(tmp_path):
    f = _write(tmp_path / "n.yaml", "MODEL:\n  _BASE_: other.yaml\n")
    with pytest.raises(ConfigError, match="top level"):
        get_cfg().merge_from_file(f)


# --------------------------------------------------------------------------- error quality
def test_unknown_key_names_full_key_and_file(tmp_path):
    f = _write(tmp_path / "typo.yaml", "MODEL:\n  SEM_SEG_HEAD:\n    FOO: 1\n")
    with pytest.raises(UnknownKeyError) as exc:
        get_cfg().merge_from_file(f)
    msg = str(exc.value)
    assert "MODEL.SEM_SEG_HEAD.FOO" in msg and f in msg
    assert "Did you mean" not in msg  # nothing close: no noisy suggestions
    assert isinstance(exc.value, KeyError)


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    base = _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LRR: 0.1\n")
    leaf = _write(tmp_path / "leaf.yaml", "_BASE_: base.yaml\nSEED: 1\n")
    with pytest.raises(UnknownKeyError) as exc:
        get_cfg().merge_from_file(leaf)
    msg = str(exc.value)
    assert "SOLVER.BASE_LRR" in msg and base in msg and "leaf.yaml" not in msg
    assert "'SOLVER.BASE_LR'" in msg  # suggestion


def test_unknown_key_suggests_key_in_other_section(tmp_path):
    f = _write(tmp_path / "misplaced.yaml", 'MODEL:\n  CLIP_PRETRAINED: "ViT-B/16"\n')
    with pytest.raises(UnknownKeyError, match=r"Did you mean: 'MODEL\.SEM_SEG_HEAD\.CLIP_PRETRAINED'"):
        get_cfg().merge_from_file(f)


def test_wrong_type_names_file_key_value_and_expected_type(tmp_path):
    f = _write(tmp_path / "bad.yaml", 'MODEL:\n  CLIP_PIXEL_MEAN: "not-a-list"\n')
    with pytest.raises(ConfigTypeError) as exc:
        get_cfg().merge_from_file(f)
    msg = str(exc.value)
    assert f in msg and "MODEL.CLIP_PIXEL_MEAN" in msg and "'not-a-list'" in msg
    assert "list/tuple of numbers" in msg
    assert isinstance(exc.value, TypeError)


@pytest.mark.parametrize(
    "yaml_text, key, fragment",
    [
        ("MODEL:\n  PIXEL_MEAN: [1.0, abc, 3.0]\n", "MODEL.PIXEL_MEAN", "element 1 ('abc')"),
        ("SOLVER:\n  MAX_ITER: 1.5\n", "SOLVER.MAX_ITER", "expected an int"),
        ("SOLVER:\n  MAX_ITER: True\n", "SOLVER.MAX_ITER", "expected an int"),
        ("SOLVER:\n  BASE_LR: yes\n", "SOLVER.BASE_LR", "expected a float"),
        ("MODEL:\n  SEM_SEG_HEAD: 5\n", "MODEL.SEM_SEG_HEAD", "is a section"),
        ("SEED:\n  X: 1\n", "SEED", "single value"),
        ("MODEL:\n  SEM_SEG_HEAD:\n    IN_FEATURES: [1, 2]\n", "MODEL.SEM_SEG_HEAD.IN_FEATURES", "strings"),
        ("TEST:\n  VISUALIZE: 1\n", "TEST.VISUALIZE", "expected a bool"),
    ],
)
def test_more_type_errors(tmp_path, yaml_text, key, fragment):
    f = _write(tmp_path / "bad.yaml", yaml_text)
    with pytest.raises(ConfigTypeError) as exc:
        get_cfg().merge_from_file(f)
    msg = str(exc.value)
    assert key in msg and fragment in msg and f in msg


def test_accepted_coercions(tmp_path):
    f = _write(
        tmp_path / "ok.yaml",
        "SOLVER:\n  BASE_LR: 1\n  STEPS: [100, 200]\n"
        "DATASETS:\n  TRAIN: [a_train]\n"
        "MODEL:\n  SWIN:\n    QK_SCALE: 0.5\n  WEIGHTS: null\n"
        "INPUT:\n  MIN_SIZE_TRAIN: (320, 384)\n",
    )
    cfg = get_cfg()
    cfg.merge_from_file(f)
    assert cfg.SOLVER.BASE_LR == 1.0 and type(cfg.SOLVER.BASE_LR) is float
    assert cfg.SOLVER.STEPS == (100, 200)  # default is a tuple
    assert cfg.DATASETS.TRAIN == ("a_train",)
    assert cfg.MODEL.SWIN.QK_SCALE == 0.5
    assert cfg.MODEL.WEIGHTS is None
    assert cfg.INPUT.MIN_SIZE_TRAIN == (320, 384)


def test_unparsable_yaml_and_non_mapping_name_the_file(tmp_path):
    bad = _write(tmp_path / "broken.yaml", "MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        get_cfg().merge_from_file(bad)
    lst = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        get_cfg().merge_from_file(lst)


def test_unsupported_version(tmp_path):
    f = _write(tmp_path / "v1.yaml", "VERSION: 1\n")
    with pytest.raises(ConfigError, match="VERSION 1"):
        get_cfg().merge_from_file(f)


def test_empty_yaml_is_a_no_op(tmp_path):
    f = _write(tmp_path / "empty.yaml", "")
    cfg = get_cfg()
    cfg.merge_from_file(f)
    assert _plain(cfg) == _plain(get_cfg())


# --------------------------------------------------------------------------- merge_from_list
def test_merge_from_list_overrides():
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / "zero_shot" / "partcatseg_voc.yaml"))
    cfg.merge_from_list(
        [
            "SOLVER.BASE_LR", "0.1",
            "SOLVER.MAX_ITER", "5",
            "MODEL.WEIGHTS", "weights/partcatseg_voc.pth",
            "DATASETS.TEST", "('a_val', 'b_val')",
            "TEST.SLIDING_WINDOW", "True",
            "MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "ViT-L/14@336px",
            "SOLVER.WARMUP_FACTOR", "1",
            "MODEL.DEVICE", "cpu",
        ]
    )
    assert cfg.SOLVER.BASE_LR == 0.1 and cfg.SOLVER.MAX_ITER == 5
    assert cfg.MODEL.WEIGHTS == "weights/partcatseg_voc.pth"
    assert cfg.DATASETS.TEST == ("a_val", "b_val")
    assert cfg.TEST.SLIDING_WINDOW is True
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED == "ViT-L/14@336px"
    assert cfg.SOLVER.WARMUP_FACTOR == 1.0 and type(cfg.SOLVER.WARMUP_FACTOR) is float
    assert cfg.MODEL.DEVICE == "cpu"


@pytest.mark.parametrize(
    "opts, exc_type, fragments",
    [
        (["MODEL.SEM_SEG_HEAD.FOO", "1"], UnknownKeyError, ["MODEL.SEM_SEG_HEAD.FOO", "command-line"]),
        (["MODLE.WEIGHTS", "x"], UnknownKeyError, ["MODLE.WEIGHTS", "'MODEL.WEIGHTS'"]),
        (["SOLVER.CLIP_GRADIENT.ENABLED", "True"], UnknownKeyError, ["Did you mean: 'SOLVER.CLIP_GRADIENTS.ENABLED'"]),
        (["SEED.X", "1"], ConfigTypeError, ["'SEED' is a value"]),
        (["MODEL.CLIP_PIXEL_MEAN", "abc"], ConfigTypeError, ["MODEL.CLIP_PIXEL_MEAN", "'abc'", "list/tuple of numbers"]),
        (["SOLVER.MAX_ITER", "ten"], ConfigTypeError, ["SOLVER.MAX_ITER", "'ten'", "an int"]),
        (["SOLVER", "1"], ConfigTypeError, ["'SOLVER' is a section"]),
        (["SOLVER.BASE_LR"], ConfigError, ["odd number"]),
        (["_BASE_", "x.yaml"], ConfigError, ["only be used inside config files"]),
    ],
)
def test_merge_from_list_errors(opts, exc_type, fragments):
    with pytest.raises(exc_type) as exc:
        get_cfg().merge_from_list(opts)
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_merge_from_other_cfg_validates():
    cfg = get_cfg()
    cfg.merge_from_other_cfg({"SOLVER": {"BASE_LR": 2}})
    assert cfg.SOLVER.BASE_LR == 2.0
    with pytest.raises(UnknownKeyError, match="SOLVER.NOPE"):
        cfg.merge_from_other_cfg({"SOLVER": {"NOPE": 2}})


# --------------------------------------------------------------------------- setup_cfg / resolve
def test_setup_cfg_merges_and_freezes():
    cfg = setup_cfg(str(CONFIGS / "zero_shot" / "partcatseg_ade.yaml"), ["SOLVER.IMS_PER_BATCH", "1"])
    assert cfg.is_frozen()
    assert cfg.SOLVER.IMS_PER_BATCH == 1
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 65535
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0
    with pytest.raises(ConfigError, match="frozen"):
        cfg.merge_from_list(["SEED", "3"])
    with pytest.raises(ConfigError, match="frozen"):
        cfg.merge_from_file(str(CONFIGS / "zero_shot" / "partcatseg_voc.yaml"))


def test_setup_cfg_defaults_only_and_propagates_errors(tmp_path):
    cfg = setup_cfg(None, [])
    assert cfg.is_frozen() and cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    bad = _write(tmp_path / "bad.yaml", "MODEL:\n  SEM_SEG_HEAD:\n    FOO: 1\n")
    with pytest.raises(UnknownKeyError, match="MODEL.SEM_SEG_HEAD.FOO"):
        setup_cfg(bad, [])
    assert not load_cfg(None).is_frozen()


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (["MODEL.CATSEG_VARIANT", "cvpr2023"], "MODEL.CATSEG_VARIANT"),
        (["SOLVER.AMP.DTYPE", "fp8"], "SOLVER.AMP.DTYPE"),
        (["MODEL.DEVICE", "gpu"], "MODEL.DEVICE"),
        (["TEST.CLASS_CHUNK", "-1"], "TEST.CLASS_CHUNK"),
    ],
)
def test_setup_cfg_rejects_bad_framework_values(opts, fragment):
    with pytest.raises(ConfigError, match=fragment):
        setup_cfg(None, opts)


def test_resolvers(tmp_path):
    import torch

    cfg = get_cfg()
    assert resolve_device(cfg) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_catseg_variant(cfg) == "cvpr2024"  # default backbone is build_resnet_backbone
    cfg.MODEL.CATSEG_VARIANT = "partcatseg_baseline"
    assert resolve_catseg_variant(cfg) == "partcatseg_baseline"
    assert resolve_text_cache_dir(cfg) == Path(os.path.expanduser("~/.cache/partcatseg/text_features"))
    cfg.MODEL.TEXT_CACHE_DIR = str(tmp_path)
    assert resolve_text_cache_dir(cfg) == tmp_path
