"""A meta-architecture defined outside the package: the worked example of docs/ARCHITECTURE.md.

It registers itself when imported (``MODEL.PLUGINS``) and implements the model protocol and nothing
else; ``tests/test_plugin_meta_arch.py`` runs it through train_net.py, the demo, the prediction
evaluator and the benchmark without any of them knowing it.

The method: a two-layer convolutional pixel encoder matched (cosine) against one embedding per class
name. The "text encoder" is a fixed random vector seeded by the name, so any vocabulary works; a
learnt background embedding gives Pred-All its extra channel.
"""
from __future__ import annotations

import zlib
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from partcatseg.modeling import META_ARCH_REGISTRY, SegmentationModel, oracle_scores, record_object_index
from partcatseg.modeling import config_map
from partcatseg.vocab import Vocabulary


def name_embedding(name: str, dim: int) -> torch.Tensor:
    """A unit vector per class name (deterministic across processes: seeded by a CRC of the name)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    return F.normalize(torch.randn(dim, generator=g), dim=0)


@META_ARCH_REGISTRY.register()
class TinyPixelMatcher(SegmentationModel):
    task = "part"

    def __init__(self, *, train_vocabulary: Vocabulary, test_vocabulary: Vocabulary, dim: int = 16,
                 size: int = 48, ignore_value: int = 255, input_format: str = "RGB") -> None:
        super().__init__(train_vocabulary=train_vocabulary, test_vocabulary=test_vocabulary, input_format=input_format)
        self.encoder = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 1))
        self.background = nn.Parameter(torch.randn(dim) * 0.1)
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.dim, self.size, self.ignore_value = dim, size, ignore_value
        self._text: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> dict:
        return dict(
            dim=cfg.MODEL.SEM_SEG_HEAD.HIDDEN_DIMS,
            **config_map.vocabularies_from_config(cfg),
            **config_map.config_values(cfg, config_map.MODEL_KEYS, "ignore_value", "input_format"),
        )

    def prepare_vocabulary(self, vocabulary: Optional[Vocabulary] = None, *, refresh: bool = False) -> None:
        if refresh:
            self._text.clear()
        self._class_embeddings(vocabulary or self.vocabulary)

    def _class_embeddings(self, vocab: Vocabulary) -> torch.Tensor:
        key = tuple(vocab.classes)
        if key not in self._text:
            self._text[key] = torch.stack([name_embedding(n, self.dim) for n in vocab.classes])
        return self._text[key].to(self.device)

    def _logits(self, images: list, vocab: Vocabulary) -> torch.Tensor:
        """(B, C + 1, size, size) logits: the vocabulary's classes, then background."""
        x = torch.stack([F.interpolate(im[None].float().to(self.device), size=(self.size,) * 2, mode="bilinear",
                                       align_corners=False)[0] for im in images]) / 255.0
        feats = F.normalize(self.encoder(x), dim=1)
        emb = torch.cat([self._class_embeddings(vocab), F.normalize(self.background, dim=0)[None]])
        return self.logit_scale * torch.einsum("bdhw,cd->bchw", feats, emb)

    def forward(self, batched_inputs: list[dict]):
        images = [r["image"] for r in batched_inputs]
        if self.training:
            logits = self._logits(images, self.train_vocabulary)
            parts = torch.stack([r["obj_part_sem_seg"] for r in batched_inputs]).to(self.device)
            parts = F.interpolate(parts[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
            target = torch.where(parts == self.ignore_value, torch.full_like(parts, logits.shape[1] - 1), parts)
            loss = F.cross_entropy(logits, target)
            accuracy = (logits.argmax(1) == target).float().mean().detach()
            return {"loss_ce": loss, "term_pixel_accuracy": accuracy}
        with torch.no_grad():
            logits = self._logits(images, self.vocabulary)
            results = []
            for record, lg in zip(batched_inputs, logits):
                h = int(record.get("height", record["image"].shape[-2]))
                w = int(record.get("width", record["image"].shape[-1]))
                probs = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0].softmax(0)
                parts = oracle_scores(probs[:-1], self.vocabulary, record_object_index(record))
                results.append({"sem_seg": parts, "sem_seg_all": probs})
            return results
