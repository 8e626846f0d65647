"""Every config key the framework knows, with the defaults the official code ran with.

Layers, applied in the order the official ``train_net.py`` scripts apply them:
  1. detectron2 0.6 ``get_cfg()`` defaults (the complete tree, so any detectron2-style YAML loads);
  2. ``add_deeplab_config`` (detectron2 ``projects/DeepLab``);
  3. CAT-Seg ``add_cat_seg_config`` together with part-catseg's ``add_mask_former_config``
     (the latter descends from OV-PARTS ``baselines/config.py``; its keys are a superset);
  4. keys the official YAMLs use that were only legal there because of ``set_new_allowed(True)``;
  5. this framework's own keys (clearly separated at the end).

The official part-catseg ``setup`` allows new keys; here every official key is declared instead, so
an unknown key is a typo and fails loudly. Values are data and follow the official defaults exactly.
"""
from __future__ import annotations

from typing import Any

from .node import CfgNode

CN = CfgNode


def _section(**items: Any) -> CfgNode:
    """Build a node from keyword items (nested dicts become nested nodes)."""
    return CN(items)


# --------------------------------------------------------------------------- 1. detectron2 0.6
def _detectron2_defaults() -> CfgNode:
    """detectron2 0.6 ``config/defaults.py`` values (DEVICE is changed in the framework layer)."""
    c = CN()
    c.VERSION = 2

    c.MODEL = _section(
        LOAD_PROPOSALS=False,
        MASK_ON=False,
        KEYPOINT_ON=False,
        DEVICE="cuda",
        META_ARCHITECTURE="GeneralizedRCNN",
        WEIGHTS="",
        PIXEL_MEAN=[103.530, 116.280, 123.675],  # BGR ImageNet mean, 0-255
        PIXEL_STD=[1.0, 1.0, 1.0],
    )
    c.INPUT = _section(
        MIN_SIZE_TRAIN=(800,),
        MIN_SIZE_TRAIN_SAMPLING="choice",
        MAX_SIZE_TRAIN=1333,
        MIN_SIZE_TEST=800,
        MAX_SIZE_TEST=1333,
        RANDOM_FLIP="horizontal",
        CROP=dict(ENABLED=False, TYPE="relative_range", SIZE=[0.9, 0.9]),
        FORMAT="BGR",
        MASK_FORMAT="polygon",
    )
    c.DATASETS = _section(
        TRAIN=(),
        PROPOSAL_FILES_TRAIN=(),
        PRECOMPUTED_PROPOSAL_TOPK_TRAIN=2000,
        TEST=(),
        PROPOSAL_FILES_TEST=(),
        PRECOMPUTED_PROPOSAL_TOPK_TEST=1000,
    )
    c.DATALOADER = _section(
        NUM_WORKERS=4,
        ASPECT_RATIO_GROUPING=True,
        SAMPLER_TRAIN="TrainingSampler",
        REPEAT_THRESHOLD=0.0,
        FILTER_EMPTY_ANNOTATIONS=True,
    )

    m = c.MODEL
    m.BACKBONE = _section(NAME="build_resnet_backbone", FREEZE_AT=2)
    m.FPN = _section(IN_FEATURES=[], OUT_CHANNELS=256, NORM="", FUSE_TYPE="sum")
    m.PROPOSAL_GENERATOR = _section(NAME="RPN", MIN_SIZE=0)
    m.ANCHOR_GENERATOR = _section(
        NAME="DefaultAnchorGenerator",
        SIZES=[[32, 64, 128, 256, 512]],
        ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
        ANGLES=[[-90, 0, 90]],
        OFFSET=0.0,
    )
    m.RPN = _section(
        HEAD_NAME="StandardRPNHead",
        IN_FEATURES=["res4"],
        BOUNDARY_THRESH=-1,
        IOU_THRESHOLDS=[0.3, 0.7],
        IOU_LABELS=[0, -1, 1],
        BATCH_SIZE_PER_IMAGE=256,
        POSITIVE_FRACTION=0.5,
        BBOX_REG_LOSS_TYPE="smooth_l1",
        BBOX_REG_LOSS_WEIGHT=1.0,
        BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
        SMOOTH_L1_BETA=0.0,
        LOSS_WEIGHT=1.0,
        PRE_NMS_TOPK_TRAIN=12000,
        PRE_NMS_TOPK_TEST=6000,
        POST_NMS_TOPK_TRAIN=2000,
        POST_NMS_TOPK_TEST=1000,
        NMS_THRESH=0.7,
        CONV_DIMS=[-1],
    )
    m.ROI_HEADS = _section(
        NAME="Res5ROIHeads",
        NUM_CLASSES=80,
        IN_FEATURES=["res4"],
        IOU_THRESHOLDS=[0.5],
        IOU_LABELS=[0, 1],
        BATCH_SIZE_PER_IMAGE=512,
        POSITIVE_FRACTION=0.25,
        SCORE_THRESH_TEST=0.05,
        NMS_THRESH_TEST=0.5,
        PROPOSAL_APPEND_GT=True,
    )
    m.ROI_BOX_HEAD = _section(
        NAME="",
        BBOX_REG_LOSS_TYPE="smooth_l1",
        BBOX_REG_LOSS_WEIGHT=1.0,
        BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
        SMOOTH_L1_BETA=0.0,
        POOLER_RESOLUTION=14,
        POOLER_SAMPLING_RATIO=0,
        POOLER_TYPE="ROIAlignV2",
        NUM_FC=0,
        FC_DIM=1024,
        NUM_CONV=0,
        CONV_DIM=256,
        NORM="",
        CLS_AGNOSTIC_BBOX_REG=False,
        TRAIN_ON_PRED_BOXES=False,
    )
    m.ROI_BOX_CASCADE_HEAD = _section(
        BBOX_REG_WEIGHTS=(
            (10.0, 10.0, 5.0, 5.0),
            (20.0, 20.0, 10.0, 10.0),
            (30.0, 30.0, 15.0, 15.0),
        ),
        IOUS=(0.5, 0.6, 0.7),
    )
    m.ROI_MASK_HEAD = _section(
        NAME="MaskRCNNConvUpsampleHead",
        POOLER_RESOLUTION=14,
        POOLER_SAMPLING_RATIO=0,
        NUM_CONV=0,
        CONV_DIM=256,
        NORM="",
        CLS_AGNOSTIC_MASK=False,
        POOLER_TYPE="ROIAlignV2",
    )
    m.ROI_KEYPOINT_HEAD = _section(
        NAME="KRCNNConvDeconvUpsampleHead",
        POOLER_RESOLUTION=14,
        POOLER_SAMPLING_RATIO=0,
        CONV_DIMS=(512,) * 8,
        NUM_KEYPOINTS=17,
        MIN_KEYPOINTS_PER_IMAGE=1,
        NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS=True,
        LOSS_WEIGHT=1.0,
        POOLER_TYPE="ROIAlignV2",
    )
    m.SEM_SEG_HEAD = _section(
        NAME="SemSegFPNHead",
        IN_FEATURES=["p2", "p3", "p4", "p5"],
        IGNORE_VALUE=255,
        NUM_CLASSES=54,
        CONVS_DIM=128,
        COMMON_STRIDE=4,
        NORM="GN",
        LOSS_WEIGHT=1.0,
    )
    m.PANOPTIC_FPN = _section(
        INSTANCE_LOSS_WEIGHT=1.0,
        COMBINE=dict(
            ENABLED=True,
            OVERLAP_THRESH=0.5,
            STUFF_AREA_LIMIT=4096,
            INSTANCES_CONFIDENCE_THRESH=0.5,
        ),
    )
    m.RETINANET = _section(
        NUM_CLASSES=80,
        IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
        NUM_CONVS=4,
        IOU_THRESHOLDS=[0.4, 0.5],
        IOU_LABELS=[0, -1, 1],
        PRIOR_PROB=0.01,
        SCORE_THRESH_TEST=0.05,
        TOPK_CANDIDATES_TEST=1000,
        NMS_THRESH_TEST=0.5,
        BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
        FOCAL_LOSS_GAMMA=2.0,
        FOCAL_LOSS_ALPHA=0.25,
        SMOOTH_L1_LOSS_BETA=0.1,
        BBOX_REG_LOSS_TYPE="smooth_l1",
        NORM="",
    )
    m.RESNETS = _section(
        DEPTH=50,
        OUT_FEATURES=["res4"],
        NUM_GROUPS=1,
        NORM="FrozenBN",
        WIDTH_PER_GROUP=64,
        STRIDE_IN_1X1=True,
        RES5_DILATION=1,
        RES2_OUT_CHANNELS=256,
        STEM_OUT_CHANNELS=64,
        DEFORM_ON_PER_STAGE=[False, False, False, False],
        DEFORM_MODULATED=False,
        DEFORM_NUM_GROUPS=1,
    )

    c.SOLVER = _section(
        LR_SCHEDULER_NAME="WarmupMultiStepLR",
        MAX_ITER=40000,
        BASE_LR=0.001,
        BASE_LR_END=0.0,  # final lr of WarmupCosineLR
        MOMENTUM=0.9,
        NESTEROV=False,
        WEIGHT_DECAY=0.0001,
        WEIGHT_DECAY_NORM=0.0,
        GAMMA=0.1,
        STEPS=(30000,),
        WARMUP_FACTOR=1.0 / 1000,
        WARMUP_ITERS=1000,
        WARMUP_METHOD="linear",
        CHECKPOINT_PERIOD=5000,
        IMS_PER_BATCH=16,  # total over all processes
        REFERENCE_WORLD_SIZE=0,
        BIAS_LR_FACTOR=1.0,
        WEIGHT_DECAY_BIAS=None,  # None = same as WEIGHT_DECAY
        CLIP_GRADIENTS=dict(ENABLED=False, CLIP_TYPE="value", CLIP_VALUE=1.0, NORM_TYPE=2.0),
        AMP=dict(ENABLED=False),
    )
    c.TEST = _section(
        EXPECTED_RESULTS=[],
        EVAL_PERIOD=0,
        KEYPOINT_OKS_SIGMAS=[],
        DETECTIONS_PER_IMAGE=100,
        AUG=dict(
            ENABLED=False,
            MIN_SIZES=(400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
            MAX_SIZE=4000,
            FLIP=True,
        ),
        PRECISE_BN=dict(ENABLED=False, NUM_ITER=200),
    )
    c.OUTPUT_DIR = "./output"
    c.SEED = -1
    c.CUDNN_BENCHMARK = False
    c.VIS_PERIOD = 0
    c.GLOBAL = _section(HACK=1.0)
    return c


# --------------------------------------------------------------------------- 2. DeepLab project
def add_deeplab_config(cfg: CfgNode) -> None:
    """detectron2 ``projects/DeepLab`` keys (the official scripts add them for the poly schedule)."""
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    head = cfg.MODEL.SEM_SEG_HEAD
    head.LOSS_TYPE = "hard_pixel_mining"
    head.PROJECT_FEATURES = ["res2"]
    head.PROJECT_CHANNELS = [48]
    head.ASPP_CHANNELS = 256
    head.ASPP_DILATIONS = [6, 12, 18]
    head.ASPP_DROPOUT = 0.1
    head.USE_DEPTHWISE_SEPARABLE_CONV = False
    cfg.MODEL.RESNETS.RES4_DILATION = 1
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"


# --------------------------------------------------------------------------- 3. CAT-Seg / part-catseg
def add_catseg_config(cfg: CfgNode) -> None:
    """Union of CAT-Seg ``add_cat_seg_config`` and part-catseg/OV-PARTS ``add_mask_former_config``.

    Where both define a key the values agree. Keys only the OV-PARTS lineage defines (MaskFormer
    loss/transformer knobs, CLIP_ADAPTER, pseudo-label switches) are accepted but unused here.
    """
    # data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # 1.0 = no single-category area limit on crops
    cfg.INPUT.SIZE_DIVISIBILITY = -1  # mapper-side padding of image and label; -1 = off
    cfg.DATASETS.VAL_ALL = ("coco_2017_val_all_stuff_sem_seg",)

    # solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01

    # MaskFormer block (only SIZE_DIVISIBILITY is read by CAT-Seg / PartCATSeg)
    cfg.MODEL.MASK_FORMER = _section(
        DEEP_SUPERVISION=True,
        NO_OBJECT_WEIGHT=0.1,
        CLASS_WEIGHT=1.0,
        DICE_WEIGHT=1.0,
        MASK_WEIGHT=20.0,
        NHEADS=8,
        DROPOUT=0.1,
        DIM_FEEDFORWARD=2048,
        ENC_LAYERS=0,
        DEC_LAYERS=6,
        PRE_NORM=False,
        HIDDEN_DIM=256,
        NUM_OBJECT_QUERIES=100,
        TRANSFORMER_IN_FEATURE="res5",
        ENFORCE_INPUT_PROJ=False,
        TEST=dict(
            PANOPTIC_ON=False,
            OBJECT_MASK_THRESHOLD=0.0,
            OVERLAP_THRESHOLD=0.0,
            SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE=False,
        ),
        SIZE_DIVISIBILITY=32,  # model-side ImageList padding
    )
    head = cfg.MODEL.SEM_SEG_HEAD
    head.MASK_DIM = 256
    head.TRANSFORMER_ENC_LAYERS = 0
    head.PIXEL_DECODER_NAME = "BasePixelDecoder"

    # Swin backbone (named by the base YAMLs, replaced by DINOv2 / no backbone in practice)
    cfg.MODEL.SWIN = _section(
        PRETRAIN_IMG_SIZE=224,
        PATCH_SIZE=4,
        EMBED_DIM=96,
        DEPTHS=[2, 2, 6, 2],
        NUM_HEADS=[3, 6, 12, 24],
        WINDOW_SIZE=7,
        MLP_RATIO=4.0,
        QKV_BIAS=True,
        QK_SCALE=None,
        DROP_RATE=0.0,
        ATTN_DROP_RATE=0.0,
        DROP_PATH_RATE=0.3,
        APE=False,
        PATCH_NORM=True,
        OUT_FEATURES=["res2", "res3", "res4", "res5"],
    )

    # open-vocabulary head: class lists, CLIP, aggregator
    head.TRAIN_CLASS_JSON = "datasets/ADE20K_2021_17_01/ADE20K_847.json"
    head.TEST_CLASS_JSON = "datasets/ADE20K_2021_17_01/ADE20K_847.json"
    head.TRAIN_CLASS_INDEXES = "datasets/coco/coco_stuff/split/seen_indexes.json"
    head.TEST_CLASS_INDEXES = "datasets/coco/coco_stuff/split/unseen_indexes.json"
    head.CLIP_PRETRAINED = "ViT-B/16"
    head.TEXT_GUIDANCE_DIM = 512
    head.TEXT_GUIDANCE_PROJ_DIM = 128
    head.APPEARANCE_GUIDANCE_DIM = 512
    head.APPEARANCE_GUIDANCE_PROJ_DIM = 128
    head.DECODER_DIMS = [64, 32]
    head.DECODER_GUIDANCE_DIMS = [256, 128]
    head.DECODER_GUIDANCE_PROJ_DIMS = [32, 16]
    head.NUM_LAYERS = 4
    head.NUM_HEADS = 4
    head.HIDDEN_DIMS = 128
    head.POOLING_SIZES = [6, 6]
    head.FEATURE_RESOLUTION = [24, 24]
    head.WINDOW_SIZES = 12
    head.ATTENTION_TYPE = "linear"
    head.PROMPT_DEPTH = 0
    head.PROMPT_LENGTH = 0
    head.CLIP_FINETUNE = "attention"
    head.BG_ON = False  # learnable "background" text embedding (part-catseg / OV-PARTS)
    cfg.MODEL.PROMPT_ENSEMBLE = False
    cfg.MODEL.PROMPT_ENSEMBLE_TYPE = "single"
    cfg.MODEL.CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]  # OpenAI CLIP mean x 255, RGB
    cfg.MODEL.CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]
    cfg.TEST.SLIDING_WINDOW = False
    cfg.TEST.DENSE_CRF = False

    _add_ov_parts_extras(cfg)


def _add_ov_parts_extras(cfg: CfgNode) -> None:
    """OV-PARTS keys inherited by part-catseg's config; unused by this framework."""
    cfg.ORACLE = False
    cfg.PSEUDO = False
    cfg.PSEUDO_WITH_PRIOR = True
    cfg.PSEUDO_REJECT_THRESHOLD = 0.0
    cfg.PSEUDO_FLAG_NAME = "trainable_flag"
    cfg.TEST.SLIDING_TILE_SIZE = 224
    cfg.TEST.SLIDING_OVERLAP = 2 / 3.0
    cfg.TEST.PER_IMAGE = False
    cfg.SOLVER.TEST_IMS_PER_BATCH = 1
    cfg.DATASETS.SAMPLE_PER_CLASS = -1
    cfg.DATASETS.SAMPLE_PER_NOVEL_CLASS = -1
    cfg.DATASETS.SAMPLE_SEED = 0
    head = cfg.MODEL.SEM_SEG_HEAD
    head.EMBEDDING_DIM = 512
    head.EMBED_HIDDEN_DIM = 1024
    head.EMBED_LAYERS = 2
    cfg.MODEL.CLIP_ADAPTER = _section(
        PROMPT_LEARNER="imagenet",
        PREDEFINED_PROMPT_TEMPLATES=["a sculpture of a {}."],
        PROMPT_DIM=512,
        PROMPT_SHAPE=(16, 0),
        PROMPT_CHECKPOINT="",
        CLIP_MODEL_NAME="ViT-B/16",
        MASK_FILL="mean",
        MASK_EXPAND_RATIO=1.0,
        MASK_THR=0.5,
        MASK_MATTING=False,
        REGION_RESIZED=True,
        CLIP_ENSEMBLE=True,
        CLIP_ENSEMBLE_WEIGHT=0.8,
        SEPERATE_ADAPTER=False,
        REGION_CLIP_ADAPTER=dict(
            CLIP_MODEL_NAME="ViT-B/16",
            PROMPT_LEARNER="predefined",
            PREDEFINED_PROMPT_TEMPLATES=["a sculpture of a {}."],
            PROMPT_DIM=512,
            PROMPT_SHAPE=(16, 0),
            PROMPT_CHECKPOINT="",
        ),
    )


# --------------------------------------------------------------------------- 4. new-allowed keys
def add_official_yaml_extras(cfg: CfgNode) -> None:
    """Keys the official YAMLs / scripts set that no official defaults function declares."""
    cfg.MODEL.BACKBONE.FREEZE = 0  # zero_shot/partcatseg_*.yaml; read by nothing
    cfg.TEST.VISUALIZE = False  # zero_shot/*.yaml; train_net reads it with a hasattr() fallback of False
    cfg.EVAL_ONLY = False  # set by part-catseg train_net on --eval-only


# --------------------------------------------------------------------------- 5. this framework
DEVICE_CHOICES_HELP = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
CATSEG_VARIANTS = ("auto", "cvpr2024", "partcatseg_baseline")
# Mixed-precision modes by name ("" = fp32); partcatseg.modeling.speed maps them to torch dtypes.
AMP_MODES = ("", "bf16", "fp16")


def add_framework_config(cfg: CfgNode) -> None:
    """Keys of this re-implementation (not in any official code); see partcatseg.config.resolve."""
    # "auto" = cuda when available, else cpu (detectron2 defaulted to "cuda").
    cfg.MODEL.DEVICE = "auto"
    # Python modules (dotted names or paths to .py files) imported before the model is built: they
    # register your own meta-architectures, datasets and vocabularies (docs/ARCHITECTURE.md).
    cfg.MODEL.PLUGINS = []
    # CATSeg meta-arch flavour: "cvpr2024" (CLIP-only CAT-Seg), "partcatseg_baseline" (part-catseg's
    # CATSeg with DINOv2 guidance); "auto" picks partcatseg_baseline iff BACKBONE.NAME is DINOv2Backbone.
    cfg.MODEL.CATSEG_VARIANT = "auto"
    # Explicit open_clip model name (e.g. "ViT-B-16-quickgelu"); "" = derive from CLIP_PRETRAINED.
    cfg.MODEL.CLIP_ARCH = ""
    # timm model name used to build DINOv2Backbone.
    cfg.MODEL.DINO_ARCH = "vit_small_patch14_dinov2"
    # Square side the DINOv2 input is resized to (448 = 32 x 32 patches of 14 px).
    cfg.MODEL.DINO_INPUT_SIZE = 448
    # Directory for cached class-name text features; "" = ~/.cache/partcatseg/text_features.
    cfg.MODEL.TEXT_CACHE_DIR = ""
    # Compute text features in fp16 (faster on GPU, not bit-identical to the official fp32 path).
    cfg.MODEL.TEXT_FP16 = False
    # Classes per aggregator slice at inference (exact; bounds memory and is faster on CPU):
    # 0 = automatic (partcatseg.modeling.speed.auto_class_chunk); >= the vocabulary size = one pass.
    cfg.TEST.CLASS_CHUNK = 0
    # Images per inference batch in evaluation (per process; the official code uses 1).  Every image
    # is preprocessed on its own, so results do not depend on it; larger batches use more memory.
    cfg.TEST.IMS_PER_BATCH = 1
    # Inference autocast: "" (fp32), "bf16" or "fp16" (text features stay fp32; outputs are fp32).
    cfg.TEST.AMP = ""
    # Store conv weights channels-last (NHWC); helps the ResNet guidance backbone.
    cfg.MODEL.CHANNELS_LAST = False
    # torch.compile the encoders and the aggregator in place (first calls pay the compilation).
    cfg.MODEL.COMPILE = False
    # Activation checkpointing in training: the CLIP and DINOv2 blocks and the aggregator's per-class
    # steps keep only their inputs and are recomputed in the backward pass -- far less training memory
    # (the per-class activations dominate it) for about one more forward pass; same gradients.
    # Inference is unaffected.  PartCATSeg and both CAT-Seg flavours (not PartCLIPSeg).
    cfg.MODEL.GRADIENT_CHECKPOINTING = False
    # Skip (and log) dataset records whose image/label cannot be read instead of failing.
    cfg.TEST.SKIP_BAD_RECORDS = False
    # Autocast dtype when SOLVER.AMP.ENABLED: "bf16" or "fp16".
    cfg.SOLVER.AMP.DTYPE = "bf16"
    # Images per process in one forward/backward (gradient accumulation). SOLVER.IMS_PER_BATCH stays the
    # batch of one optimizer step; each process accumulates IMS_PER_BATCH / (processes x MICRO_BATCH_SIZE)
    # micro-batches, which see the images the ranks of a larger DDP job would see (the official
    # 4 GPUs x 1 image on one device: IMS_PER_BATCH 4, MICRO_BATCH_SIZE 1). 0 = no accumulation.
    cfg.SOLVER.MICRO_BATCH_SIZE = 0
    # Pretrained DINOv2 loaded into backbone.dinov2 before MODEL.WEIGHTS when *training* (the official
    # code takes it from torch.hub): a file path or a weights name (tools/download_weights.py --list);
    # "" = keep the random initialisation (toy configs).
    cfg.MODEL.DINO_WEIGHTS = "dinov2_vits14"
    # Pretrained CLIP for training when MODEL.WEIGHTS does not hold one (official: clip.load of the
    # OpenAI weights); "auto" = the OpenAI CLIP of SEM_SEG_HEAD.CLIP_PRETRAINED, "" = keep random.
    cfg.MODEL.CLIP_WEIGHTS = "auto"
    # CLIP input side; 0 = official rule (384 for ViT-B/16, else 336). The patch grid it yields
    # must equal SEM_SEG_HEAD.FEATURE_RESOLUTION.
    cfg.MODEL.CLIP_RESOLUTION = 0
    # Reduced-width CLIP built from the same open_clip code, used when MODEL.CLIP_ARCH == "tiny"
    # (toy configs and tests: trains from scratch on a CPU).
    cfg.MODEL.TINY_CLIP = CfgNode()
    cfg.MODEL.TINY_CLIP.EMBED_DIM = 64
    cfg.MODEL.TINY_CLIP.WIDTH = 64
    cfg.MODEL.TINY_CLIP.LAYERS = 2
    cfg.MODEL.TINY_CLIP.HEADS = 2
    cfg.MODEL.TINY_CLIP.PATCH_SIZE = 16
    cfg.MODEL.TINY_CLIP.TEXT_WIDTH = 64
    cfg.MODEL.TINY_CLIP.TEXT_LAYERS = 2
    cfg.MODEL.TINY_CLIP.TEXT_HEADS = 2
    # Reduced DINOv2 (timm ViT with these sizes) used when MODEL.DINO_ARCH == "tiny".
    cfg.MODEL.TINY_DINO = CfgNode()
    cfg.MODEL.TINY_DINO.EMBED_DIM = 48
    cfg.MODEL.TINY_DINO.DEPTH = 2
    cfg.MODEL.TINY_DINO.NUM_HEADS = 2
    # --- long runs (README "When things go wrong")
    # Seconds a DDP collective may wait for the other ranks before it raises (init_process_group's
    # timeout, for --num-gpus N and torchrun); train_net.py --dist-timeout overrides it.
    cfg.DIST_TIMEOUT = 1800.0
    # Progress watchdog: stop every rank, naming the stalled one, when an iteration makes no progress
    # for this many seconds (0 = off). The first iteration after a (re)start is allowed at least 600 s;
    # checkpoint writing and evaluation are not timed.
    cfg.SOLVER.WATCHDOG_SECONDS = 600.0
    # After every optimizer step and before every save, trainable weights must be finite and at most
    # this large in absolute value (0 = check only finiteness).
    cfg.SOLVER.MAX_WEIGHT_ABS = 1.0e8
    # Training: replace (deterministically) and report records whose image/label cannot be read,
    # listed in OUTPUT_DIR/skipped_train_records.json, instead of stopping (--skip-bad-records).
    cfg.DATALOADER.SKIP_BAD_RECORDS = False
    # With SKIP_BAD_RECORDS: stop when more distinct training records than this were skipped (-1 = no limit).
    cfg.DATALOADER.MAX_BAD_RECORDS = 10


# --------------------------------------------------------------------------- public entry point
def _build_defaults() -> CfgNode:
    cfg = _detectron2_defaults()
    add_deeplab_config(cfg)
    add_catseg_config(cfg)
    add_official_yaml_extras(cfg)
    add_framework_config(cfg)
    from .partclipseg_defaults import add_partclipseg_config  # PartCLIPSeg keys (official + framework)
    add_partclipseg_config(cfg)
    return cfg


_DEFAULTS = _build_defaults()


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the full default config (every official and framework key)."""
    return _DEFAULTS.clone()
