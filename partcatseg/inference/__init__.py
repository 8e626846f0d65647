"""Prediction on your own images: image I/O, the result type and the predictors.

* ``io``        – :func:`load_image` (paths, PIL images, arrays; EXIF orientation) and :func:`load_mask`;
* ``result``    – :class:`Prediction` (labels, confidences, scores, areas, a JSON summary);
* ``predictor`` – :class:`Predictor` for any meta-architecture (``PartPredictor`` / ``SemanticPredictor``
  restrict the task) and :func:`build_model_with_weights`.
"""
from .io import load_image, load_mask
from .predictor import PartPredictor, Predictor, SemanticPredictor, build_model_with_weights
from .result import Prediction

__all__ = [
    "Prediction",
    "Predictor",
    "PartPredictor",
    "SemanticPredictor",
    "build_model_with_weights",
    "load_image",
    "load_mask",
]
