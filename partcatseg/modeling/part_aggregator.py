"""PartCATSeg's two-stage cost aggregator.

Stage 1 aggregates one cost volume over *generalized* parts ("head"), objects ("cat") and the
background in a single pass with shared weights.  Stage 2 builds, for every object-specific class
("cat's head"), a feature from the stage-1 embeddings of its part and its object, compares it with
that class's own prompts, and aggregates the resulting cost again.  Both stages share the decoder.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from einops import rearrange
from torch import nn

from .aggregator import AggregatorBase, AggregatorLayer, cosine_cost

__all__ = ["PartAggregator"]


class PartAggregator(AggregatorBase):
    """Module tree and key names follow the official checkpoint (``layers_object`` is kept but unused)."""

    def __init__(
        self,
        *,
        text_guidance_dim: int = 512,
        text_guidance_proj_dim: int = 128,
        appearance_guidance_dim: int = 384,
        appearance_guidance_proj_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32),
        decoder_guidance_dims: Sequence[int] = (384, 384),
        decoder_guidance_proj_dims: Sequence[int] = (32, 16),
        num_layers: int = 2,
        nheads: int = 4,
        hidden_dim: int = 128,
        pooling_size: Sequence[int] = (2, 2),
        feature_resolution: Sequence[int] = (24, 24),
        window_size: int = 12,
        attention_type: str = "query",
        prompt_channel: int = 80,
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
        )

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                AggregatorLayer(
                    hidden_dim, text_guidance_proj_dim, appearance_guidance_proj_dim, nheads,
                    tuple(feature_resolution), pooling_size, window_size, attention_type,
                )
                for _ in range(num_layers)
            )

        self.layers = stack()
        # Present in the released checkpoints but never run (the paper's split pass was disabled).
        self.layers_object = stack()
        self.layers_specific_part = stack()
        self.conv2 = nn.Conv2d(prompt_channel, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.conv_proj_feat = nn.Conv2d(hidden_dim * 2, text_guidance_dim, kernel_size=1)

    def copy_stage_weights(self) -> None:
        """The official constructor copies ``conv1``/``layers`` into the stage-2 modules.

        It runs *before* any checkpoint is loaded, i.e. it duplicates the random init; training from
        the CAT-Seg checkpoint therefore starts stage 2 from those copies.  Reproduced for fidelity.
        """
        self.conv2.load_state_dict(self.conv1.state_dict())
        self.layers_object.load_state_dict(self.layers.state_dict())
        self.layers_specific_part.load_state_dict(self.layers.state_dict())

    def forward(
        self,
        img_feats: torch.Tensor,
        text_part_obj: torch.Tensor,
        text_specific: torch.Tensor,
        vis: Sequence[torch.Tensor],
        class_to_part: torch.Tensor,
        class_to_object: torch.Tensor,
        num_parts: int,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Run both stages.

        Args:
            img_feats: (B, C, h, w) dense CLIP features.
            text_part_obj: (B, Np + No + 1, P, C) prompts of parts ++ objects ++ background.
            text_specific: (B, Nop + 1, P, C) prompts of object-specific parts ++ background.
            vis: appearance guidance maps, coarsest first.
            class_to_part, class_to_object: (Nop,) long indices of each class's part / object.
            num_parts: Np.
        Returns:
            stage-1 logits (B, Np+No+1, 4h, 4w), stage-2 logits (B, Nop+1, 4h, 4w) and the raw cost
            volumes / embeddings of both stages (used by the compositional loss).
        """
        corr = cosine_cost(img_feats, text_part_obj)  # B P T1 h w
        embed = self.embed_cost(self.conv1, corr)
        guidance, decoder_guidance = self.project_guidance(vis)
        text_guidance = self.project_text(text_part_obj)
        for layer in self.layers:
            embed = layer(embed, guidance, text_guidance)
        part_obj_logits = self.decode(embed, decoder_guidance)

        b, c, _, h, w = embed.shape
        per_class = rearrange(embed, "B C T H W -> B T C (H W)")
        part_embed = per_class[:, :num_parts].index_select(1, class_to_part)
        obj_embed = per_class[:, num_parts:].index_select(1, class_to_object)
        specific = torch.cat([part_embed, obj_embed], dim=2)  # B Nop 2C hw
        bg = per_class[:, -1:].repeat(1, 1, 2, 1)
        specific = torch.cat([specific, bg], dim=1)  # B Nop+1 2C hw
        t2 = specific.shape[1]
        feats = self.conv_proj_feat(specific.reshape(b * t2, 2 * c, h, w))
        feats = feats.view(b, t2, -1, h, w)

        # every class is compared with its own prompts only
        feats = nn.functional.normalize(feats, dim=2)
        text = nn.functional.normalize(text_specific, dim=-1)
        cost_corr = torch.einsum("btchw,btpc->bpthw", feats, text)
        cost_embed = self.embed_cost(self.conv2, cost_corr)
        text_guidance2 = self.project_text(text_specific)
        for layer in self.layers_specific_part:
            cost_embed = layer(cost_embed, guidance, text_guidance2)
        logits = self.decode(cost_embed, decoder_guidance)
        costs = {
            "part_obj_cost": corr,
            "specific_part_cost": cost_corr,
            "part_obj_cost_emb": embed,
            "specific_part_cost_emb": cost_embed,
        }
        return part_obj_logits, logits, costs
