"""Networks: CLIP/DINOv2 wrappers, cost aggregators and the PartCATSeg / CAT-Seg meta-architectures."""
from .build import META_ARCH_REGISTRY, build_model

__all__ = ["META_ARCH_REGISTRY", "build_model"]
