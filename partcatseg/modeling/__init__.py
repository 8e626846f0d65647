"""Networks: CLIP/DINOv2 wrappers, cost aggregators and the meta-architectures behind one protocol.

``build_model(cfg)`` builds ``MODEL.META_ARCHITECTURE``; every meta-architecture is a
:class:`SegmentationModel` (the interface prediction, evaluation, training and the tools use).
"""
from .build import build_model, import_plugins, meta_architecture_class, registered_meta_architectures
from .meta_arch import META_ARCH_REGISTRY, SegmentationModel, oracle_scores, record_object_index

__all__ = [
    "META_ARCH_REGISTRY",
    "SegmentationModel",
    "build_model",
    "import_plugins",
    "meta_architecture_class",
    "oracle_scores",
    "record_object_index",
    "registered_meta_architectures",
]
