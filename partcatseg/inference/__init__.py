"""Prediction on your own images: image I/O, the result type and the predictors.

* ``io``        – :func:`load_image` (paths, PIL images, arrays; EXIF orientation) and :func:`load_mask`;
* ``result``    – :class:`Prediction` (labels, confidences, scores, areas, a JSON summary);
* ``predictor`` – :class:`Predictor` for any meta-architecture (``PartPredictor`` / ``SemanticPredictor``
  restrict the task) and :func:`build_model_with_weights`;
* ``hub``       – portable weights: :func:`from_pretrained` (a weights name, a pretrained folder, a
  checkpoint with its config, a Hugging Face repository), ``convert_checkpoint``, ``push_to_hub``
  (imported on first use: ``huggingface_hub`` is not loaded by ``import partcatseg.inference``).
"""
from .io import load_image, load_mask
from .predictor import PartPredictor, Predictor, SemanticPredictor, build_model_with_weights
from .result import Prediction

__all__ = [
    "from_pretrained",
    "Prediction",
    "Predictor",
    "PartPredictor",
    "SemanticPredictor",
    "build_model_with_weights",
    "load_image",
    "load_mask",
]


def from_pretrained(name_or_path, **kwargs):
    """A model from a weights name, a pretrained folder, a checkpoint or a hub repository: see
    :func:`partcatseg.inference.hub.from_pretrained`."""
    from .hub import from_pretrained as _from_pretrained

    return _from_pretrained(name_or_path, **kwargs)
