"""PartCATSeg: open-vocabulary part segmentation (PartCATSeg, CAT-Seg), detectron2-compatible."""

__version__ = "0.1.0"
