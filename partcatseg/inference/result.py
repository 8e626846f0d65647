"""The result of predicting one image: labels, confidences, scores and a JSON summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["Prediction"]


@dataclass
class Prediction:
    """One image's result.

    ``labels`` (H, W) int64 index ``class_names``; -1 = background / no class (Pred-All background,
    outside ``object_mask``). ``confidence`` (H, W) is the score of the chosen label (the background
    score where the label is -1 by background, 0 outside the mask). ``scores`` (C, H, W) are the
    per-class probabilities (-1 on classes excluded by ``object=``), kept when ``keep_scores``.
    """

    labels: np.ndarray
    confidence: np.ndarray
    class_names: list[str]
    scores: Optional[np.ndarray] = None
    source: Optional[str] = None
    object_name: Optional[str] = None
    vocabulary_name: str = "custom"
    extra: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return int(self.labels.shape[1])

    @property
    def label_ids_present(self) -> list[int]:
        ids = np.unique(self.labels)
        return [int(i) for i in ids if i >= 0]

    @property
    def label_names_present(self) -> list[str]:
        return [self.class_names[i] for i in self.label_ids_present]

    def areas(self) -> dict[str, int]:
        """Pixel count of every class present (class-index order)."""
        counts = np.bincount(self.labels[self.labels >= 0].ravel(), minlength=len(self.class_names))
        return {self.class_names[i]: int(counts[i]) for i in self.label_ids_present}

    def mean_scores(self) -> dict[str, float]:
        """Mean confidence over each present class's pixels."""
        flat = self.labels.ravel()
        keep = flat >= 0
        sums = np.bincount(flat[keep], weights=self.confidence.ravel()[keep].astype(np.float64), minlength=len(self.class_names))
        counts = np.bincount(flat[keep], minlength=len(self.class_names))
        return {self.class_names[i]: float(sums[i] / counts[i]) for i in self.label_ids_present}

    def summary(self) -> dict:
        """JSON-ready description: the classes present with their areas and mean scores (largest first)."""
        areas, scores = self.areas(), self.mean_scores()
        total = float(self.height * self.width)
        classes = [
            {
                "id": self.class_names.index(name),
                "name": name,
                "pixels": areas[name],
                "area_fraction": round(areas[name] / total, 6),
                "mean_score": round(scores[name], 6),
            }
            for name in sorted(areas, key=lambda n: (-areas[n], self.class_names.index(n)))
        ]
        unlabeled = int((self.labels < 0).sum())
        return {
            "image": self.source,
            "height": self.height,
            "width": self.width,
            "vocabulary": self.vocabulary_name,
            "num_vocabulary_classes": len(self.class_names),
            "object": self.object_name,
            "unlabeled_pixels": unlabeled,
            "classes": classes,
        }
