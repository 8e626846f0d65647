"""CAT-Seg's cost aggregator, in both released generations.

* **CVPR 2024** (``model_base.pth`` / ``model_large.pth``): one prompt per class (``prompt_channel=1``)
  and a fixed class-axis length ``pad_len=256`` — shorter vocabularies are padded with learnt tokens
  inside every class-attention step, longer ones are truncated per image to the 256 classes with the
  highest initial cosine cost; the dropped classes get the logit -100.
* **pre-CVPR** (``model_final_base.pth``, the CAT-Seg baseline inside part-catseg and OV-PARTS):
  80 prompt channels, ``pad_len=0`` (no padding parameters, no truncation).

Both use linear (elu+1) class attention: the pre-CVPR ``model.py`` honours ``ATTENTION_TYPE`` and the
configs set "linear" (unlike PartCATSeg's aggregator, which hard-wires its own attention).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aggregator import AggregatorBase, AggregatorLayer, cosine_cost

__all__ = ["CATSegAggregator", "TRUNCATED_LOGIT"]

# Logit given to the classes a >pad_len vocabulary drops (sigmoid(-100) ~ 4e-44, i.e. never chosen).
TRUNCATED_LOGIT = -100.0


class CATSegAggregator(AggregatorBase):
    """Cost volume -> spatial/class aggregation -> per-class logits at 4x the feature resolution.

    Defaults are the CVPR ViT-B/16 configuration; ``prompt_channel=80, pad_len=0`` gives the pre-CVPR
    aggregator.  Parameter names follow the official checkpoints.
    """

    def __init__(
        self,
        *,
        text_guidance_dim: int = 512,
        text_guidance_proj_dim: int = 128,
        appearance_guidance_dim: int = 512,
        appearance_guidance_proj_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32),
        decoder_guidance_dims: Sequence[int] = (256, 128),
        decoder_guidance_proj_dims: Sequence[int] = (32, 16),
        num_layers: int = 2,
        nheads: int = 4,
        hidden_dim: int = 128,
        pooling_size: Sequence[int] = (2, 2),
        feature_resolution: Sequence[int] = (24, 24),
        window_size: int = 12,
        attention_type: str = "linear",
        prompt_channel: int = 1,
        pad_len: int = 256,
        class_chunk: int = 0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            text_guidance_dim=text_guidance_dim,
            text_guidance_proj_dim=text_guidance_proj_dim,
            appearance_guidance_dim=appearance_guidance_dim,
            appearance_guidance_proj_dim=appearance_guidance_proj_dim,
            decoder_dims=decoder_dims,
            decoder_guidance_dims=decoder_guidance_dims,
            decoder_guidance_proj_dims=decoder_guidance_proj_dims,
            hidden_dim=hidden_dim,
            prompt_channel=prompt_channel,
            class_chunk=class_chunk,
            grad_checkpointing=grad_checkpointing,
        )
        if pad_len < 0:
            raise ValueError(f"pad_len={pad_len}; expected 0 (off) or a positive class count")
        self.pad_len = pad_len
        self.prompt_channel = prompt_channel
        self.layers = nn.ModuleList(
            AggregatorLayer(
                hidden_dim, text_guidance_proj_dim, appearance_guidance_proj_dim, nheads,
                tuple(feature_resolution), pooling_size, window_size, attention_type, pad_len,
                grad_checkpointing=grad_checkpointing,
            )
            for _ in range(num_layers)
        )

    def select_classes(self, corr: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-image indices (B, pad_len) of the classes kept when T > pad_len, else None.

        Classes are ranked by their maximum initial cosine cost over prompts and positions
        (``corr`` is the (B, T, h, w, P) volume of :func:`cosine_cost`).
        """
        num_classes = corr.shape[1]
        if self.pad_len <= 0 or num_classes <= self.pad_len:
            return None
        score = corr.amax(dim=(2, 3, 4))  # B T
        return score.topk(self.pad_len, dim=-1, sorted=False).indices

    def forward(
        self, img_feats: torch.Tensor, text_feats: torch.Tensor, vis: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Logits (B, T, 4h, 4w).

        Args:
            img_feats: (B, C, h, w) dense CLIP features.
            text_feats: (B, T, P, C) text features (P prompts per class, P == ``prompt_channel``).
            vis: guidance maps, coarsest first: appearance (h x w), then the two decoder maps (2x, 4x).
        """
        if text_feats.shape[2] != self.prompt_channel:
            raise ValueError(
                f"text features have {text_feats.shape[2]} prompts per class but the aggregator's conv1 "
                f"expects prompt_channel={self.prompt_channel}"
            )
        num_classes = text_feats.shape[1]
        chunk = self.active_chunk(img_feats.shape[0])
        corr = cosine_cost(img_feats, text_feats)  # B T h w P
        kept = self.select_classes(corr)
        if kept is not None:
            b, _, p, c = text_feats.shape
            text_feats = torch.gather(
                F.normalize(text_feats, dim=-1), 1, kept[:, :, None, None].expand(b, -1, p, c)
            )
            corr = cosine_cost(img_feats, text_feats)

        embed = self.embed_cost(self.conv1, corr, chunk)
        guidance, decoder_guidance = self.project_guidance(vis)
        text_guidance = self.project_text(text_feats)
        for layer in self.layers:
            embed = layer(embed, guidance, text_guidance, chunk)
        logits = self.decode(embed, decoder_guidance, chunk)

        if kept is None:
            return logits
        b, _, h, w = logits.shape
        full = logits.new_full((b, num_classes, h, w), TRUNCATED_LOGIT)
        return full.scatter(1, kept[:, :, None, None].expand(-1, -1, h, w), logits)
