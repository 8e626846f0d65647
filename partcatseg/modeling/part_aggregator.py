"""PartCATSeg's two-stage cost aggregator.

Stage 1 aggregates one cost volume over *generalized* parts ("head"), objects ("cat") and the
background in a single pass with shared weights.  Stage 2 builds, for every object-specific class
("cat's head"), a feature from the stage-1 embeddings of its part and its object, compares it with
that class's own prompts, and aggregates the resulting cost again.  Both stages share the decoder.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aggregator import AggregatorBase, AggregatorLayer, _fast_inference, class_slices, cosine_cost, over_class_slices
from .fused import linear
from .grad_checkpoint import checkpointed

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

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                AggregatorLayer(
                    hidden_dim, text_guidance_proj_dim, appearance_guidance_proj_dim, nheads,
                    tuple(feature_resolution), pooling_size, window_size, attention_type,
                    grad_checkpointing=grad_checkpointing,
                )
                for _ in range(num_layers)
            )

        self.layers = stack()
        # Present in the released checkpoints but never run (the paper's split pass was disabled).
        self.layers_object = stack()
        self.layers_specific_part = stack()
        self.conv2 = nn.Conv2d(prompt_channel, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.conv_proj_feat = nn.Conv2d(hidden_dim * 2, text_guidance_dim, kernel_size=1)

    def profile_stages(self) -> dict[str, list[tuple[Any, str]]]:
        stages = super().profile_stages()  # its "aggregation layers" are stage 1's
        stages["stage-2 cost"] = [(self, "specific_cost")]
        stages["stage-2 aggregation layers"] = [(layer, "forward") for layer in self.layers_specific_part]
        return stages

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
        decode_part_obj: bool = True,
    ) -> tuple[Optional[torch.Tensor], torch.Tensor, dict]:
        """Run both stages.

        Args:
            img_feats: (B, C, h, w) dense CLIP features.
            text_part_obj: (B, Np + No + 1, P, C) prompts of parts ++ objects ++ background.
            text_specific: (B, Nop + 1, P, C) prompts of object-specific parts ++ background.
            vis: appearance guidance maps, coarsest first.
            class_to_part, class_to_object: (Nop,) long indices of each class's part / object.
            num_parts: Np.
            decode_part_obj: decode the stage-1 logits (only training uses them; inference skips
                their decoder, a third of the decoding work).
        Returns:
            stage-1 logits (B, Np+No+1, 4h, 4w) or None, stage-2 logits (B, Nop+1, 4h, 4w) and the
            cost volumes / embeddings of both stages in the official layouts (``(B, P, T, h, w)``
            and ``(B, C, T, h, w)`` views; used by the compositional loss).
        """
        chunk = self.active_chunk(img_feats.shape[0])
        corr = cosine_cost(img_feats, text_part_obj)  # B T1 h w P
        embed = self.embed_cost(self.conv1, corr, chunk)
        guidance, decoder_guidance = self.project_guidance(vis)
        text_guidance = self.project_text(text_part_obj)
        for layer in self.layers:
            embed = layer(embed, guidance, text_guidance, chunk)
        part_obj_logits = self.decode(embed, decoder_guidance, chunk) if decode_part_obj else None

        cost_corr = checkpointed(  # its (classes x 512)-wide features are the largest tensors of stage 2
            self.specific_cost, embed, text_specific, class_to_part, class_to_object, num_parts, chunk,
            enabled=self.grad_checkpointing and self.training,
        )
        cost_embed = self.embed_cost(self.conv2, cost_corr, chunk)
        text_guidance2 = self.project_text(text_specific)
        for layer in self.layers_specific_part:
            cost_embed = layer(cost_embed, guidance, text_guidance2, chunk)
        logits = self.decode(cost_embed, decoder_guidance, chunk)
        costs = {
            "part_obj_cost": corr.permute(0, 4, 1, 2, 3),
            "specific_part_cost": cost_corr.permute(0, 4, 1, 2, 3),
            "part_obj_cost_emb": embed.permute(0, 4, 1, 2, 3),
            "specific_part_cost_emb": cost_embed.permute(0, 4, 1, 2, 3),
        }
        return part_obj_logits, logits, costs

    def specific_cost(
        self,
        embed: torch.Tensor,
        text_specific: torch.Tensor,
        class_to_part: torch.Tensor,
        class_to_object: torch.Tensor,
        num_parts: int,
        class_chunk: int = 0,
    ) -> torch.Tensor:
        """Stage-2 cost (B, Nop+1, h, w, P): every class's feature against its own prompts only.

        A class's feature is ``conv_proj_feat([part embedding ; object embedding])`` (the background
        row pairs the background embedding with itself).  That 1x1 convolution is linear, so its two
        halves are applied to the Np+1 part-side and No+1 object-side embeddings once and the results
        are gathered per class, instead of convolving Nop+1 concatenations.
        """
        b, t1, h, w, c = embed.shape
        weight = self.conv_proj_feat.weight.flatten(1)  # D x 2C
        part_side = linear(torch.cat([embed[:, :num_parts], embed[:, -1:]], dim=1), weight[:, :c],
                           self.conv_proj_feat.bias)  # parts ++ background (+ the bias, once)
        obj_side = linear(embed[:, num_parts:], weight[:, c:])  # objects ++ background
        device = class_to_part.device
        part_index = torch.cat([class_to_part, torch.tensor([num_parts], device=device)])
        obj_index = torch.cat([class_to_object, torch.tensor([t1 - num_parts - 1], device=device)])
        text = F.normalize(text_specific, dim=-1)
        t2, p = text.shape[1:3]

        if _fast_inference(embed, autocast=True) and embed.device.type == "cpu":  # a loop over classes: CPU only
            return _specific_cost_inference(part_side, obj_side, part_index, obj_index, text, class_chunk)

        def cost(s: slice) -> torch.Tensor:
            feats = part_side.index_select(1, part_index[s]).add_(obj_side.index_select(1, obj_index[s]))
            feats = F.normalize(feats, dim=-1)
            n = feats.shape[1]
            return torch.matmul(feats.view(b, n, h * w, -1), text[:, s].transpose(-1, -2)).view(b, n, h, w, p)

        return over_class_slices(cost, t2, class_chunk)


def _specific_cost_inference(
    part_side: torch.Tensor,
    obj_side: torch.Tensor,
    part_index: torch.Tensor,
    obj_index: torch.Tensor,
    text: torch.Tensor,
    class_chunk: int,
) -> torch.Tensor:
    """:meth:`PartAggregator.specific_cost` at inference with a third of the memory traffic.

    Each class's (h, w, D) feature is written once (part + object side added straight into a
    buffer), its norm is read off it, and the division by the norm is applied to the (h, w, P)
    cosine instead of the D-wide feature (``(f / |f|) . t = (f . t) / |f|``; float re-association
    only, ~1e-7).  The reference gathers both sides, adds, normalises into a new tensor and then
    multiplies: seven passes over the D-wide features instead of three.
    """
    b, _, h, w, d = part_side.shape
    t2, p = text.shape[1:3]
    out = part_side.new_empty((b, t2, h, w, p))
    parts, objs = part_index.tolist(), obj_index.tolist()
    for s in class_slices(t2, class_chunk):
        n = s.stop - s.start
        feats = part_side.new_empty((b, n, h, w, d))
        for i, (pi, oi) in enumerate(zip(parts[s], objs[s])):
            torch.add(part_side[:, pi], obj_side[:, oi], out=feats[:, i])
        norm = torch.linalg.vector_norm(feats, dim=-1, keepdim=True).clamp_min_(1e-12)  # F.normalize's eps
        cos = torch.matmul(feats.view(b, n, h * w, d), text[:, s].transpose(-1, -2))
        out[:, s] = cos.view(b, n, h, w, p).div_(norm)
    return out
