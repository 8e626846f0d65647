"""Data: catalogs and metadata, augmentations, dataset mappers and loaders.

``partcatseg.data.catalog`` (DatasetCatalog / MetadataCatalog with every official dataset's metadata),
``partcatseg.data.transforms`` (detectron2-style augmentations), ``partcatseg.data.mappers`` (record ->
tensors, one mapper per ``INPUT.DATASET_MAPPER_NAME``) and ``partcatseg.data.build`` (deterministic,
resumable train loader; sharded test loader).
"""
from . import catalog
from .datasets import registry as _loader_registry  # noqa: F401  (registers the built-in loaders)
from .build import (
    SkippedRecord,
    TestLoader,
    TrainLoader,
    TrainingStream,
    build_test_loader,
    build_train_loader,
    inference_shard,
    trivial_batch_collator,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .mappers import (
    MAPPER_REGISTRY,
    BadRecordError,
    ObjPartSemanticMapper,
    PartImageNetMapper,
    PartImageNetOODMapper,
    SemanticMapper,
    build_augmentations,
    build_mapper,
    read_image,
    read_label_map,
)
from .transforms import AugInput, AugRandom

__all__ = [
    "catalog",
    "DatasetCatalog",
    "MetadataCatalog",
    "Metadata",
    "AugInput",
    "AugRandom",
    "BadRecordError",
    "read_image",
    "read_label_map",
    "ObjPartSemanticMapper",
    "PartImageNetMapper",
    "PartImageNetOODMapper",
    "SemanticMapper",
    "MAPPER_REGISTRY",
    "build_mapper",
    "build_augmentations",
    "build_train_loader",
    "build_test_loader",
    "TrainLoader",
    "TestLoader",
    "TrainingStream",
    "SkippedRecord",
    "inference_shard",
    "trivial_batch_collator",
]
