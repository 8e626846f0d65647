"""Class-name text features from the model's own CLIP text tower, cached in memory and on disk.

The official code encodes every class name with 80 templates at model construction (fp16, on
CUDA, with downloaded OpenAI weights).  We encode lazily, in fp32, with whatever text tower the
checkpoint holds, and cache the result under a key made of the text-tower weights, the templates and
the class names, so a second start reads a small file instead of running the text encoder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .clip import tokenize

__all__ = [
    "encode_tokens",
    "encode_prompts",
    "encode_class_names",
    "text_tower_fingerprint",
    "forget_text_fingerprint",
    "TextFeatureCache",
]

logger = logging.getLogger(__name__)


def encode_tokens(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP ``encode_text`` over only the first L positions, L = the last end-of-text position + 1.

    The text transformer is causal and pools the end-of-text token, so positions after it never
    influence the result: dropping them gives the same embedding for a fraction of the cost
    (prompts are ~10 tokens of the 77-token context).
    """
    eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest token id
    length = int(eot.max()) + 1
    x = clip_model.token_embedding(tokens[:, :length])
    x = x + clip_model.positional_embedding[:length]
    mask = clip_model.attn_mask[:length, :length] if clip_model.attn_mask is not None else None
    x = clip_model.transformer(x, attn_mask=mask)
    x = clip_model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    return x @ clip_model.text_projection


def encode_prompts(clip_model: nn.Module, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (N, C) of ``prompts`` (gradients flow if enabled)."""
    device = clip_model.token_embedding.weight.device
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenize(prompts[start : start + batch_size]).to(device)
        out.append(F.normalize(encode_tokens(clip_model, tokens), dim=-1))
    return torch.cat(out, dim=0)


def encode_class_names(
    clip_model: nn.Module,
    names: Sequence[str],
    templates: Sequence[str],
    synonyms: str = "average",
) -> torch.Tensor:
    """Text features (T, P, C) for T class names and P templates.

    A name ``"a, b"`` holds synonyms: ``synonyms="average"`` averages the normalised embeddings of all
    synonyms per template and re-normalises (PartCATSeg, pre-CVPR CAT-Seg); ``"first"`` keeps only the
    first synonym (CAT-Seg CVPR).
    """
    if synonyms not in ("average", "first"):
        raise ValueError(f"synonyms={synonyms!r}; expected 'average' or 'first'")
    prompts: list[str] = []
    spans: list[tuple[int, int]] = []  # per (class, template): slice of prompts
    for name in names:
        parts = name.split(", ") if ", " in name else [name]
        if synonyms == "first":
            parts = parts[:1]
        for template in templates:
            spans.append((len(prompts), len(prompts) + len(parts)))
            prompts.extend(template.format(p) for p in parts)
    emb = encode_prompts(clip_model, prompts)
    if len(prompts) == len(spans):
        feats = emb
    else:
        feats = torch.stack([F.normalize(emb[a:b].mean(dim=0), dim=-1) for a, b in spans])
    return feats.view(len(names), len(templates), -1)


def _text_parameters(clip_model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [
        (name, p)
        for name, p in clip_model.named_parameters()
        if not name.startswith("visual.") and name != "logit_scale"
    ]


_FINGERPRINT_ATTR = "_partcatseg_text_fp"


def forget_text_fingerprint(clip_model: nn.Module) -> None:
    """Drop the memoised fingerprint, so the next call hashes the weights again (as a new process would)."""
    if hasattr(clip_model, _FINGERPRINT_ATTR):
        object.__delattr__(clip_model, _FINGERPRINT_ATTR)


def text_tower_fingerprint(clip_model: nn.Module) -> str:
    """SHA-256 of the text tower's weights: the cache key part that changes with the checkpoint."""
    versions = tuple(p._version for _, p in _text_parameters(clip_model))
    memo = getattr(clip_model, _FINGERPRINT_ATTR, None)
    if memo is not None and memo[0] == versions:
        return memo[1]
    h = hashlib.sha256()
    for name, p in _text_parameters(clip_model):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()
    object.__setattr__(clip_model, _FINGERPRINT_ATTR, (versions, digest))
    return digest


class TextFeatureCache:
    """Memory + disk cache of :func:`encode_class_names` results.

    ``cache_dir=None`` disables the disk level (memory only).  Files are written atomically, so an
    interrupted run never leaves a half-written cache entry behind.
    """

    def __init__(self, cache_dir: Optional[str] = None) -> None:
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else None
        self._memory: dict[str, torch.Tensor] = {}

    def clear_memory(self) -> None:
        """Forget the in-memory level (the next ``get`` reads the disk cache, as a new process would)."""
        self._memory.clear()

    @staticmethod
    def key(fingerprint: str, names: Sequence[str], templates: Sequence[str], synonyms: str) -> str:
        h = hashlib.sha256()
        for part in (fingerprint, synonyms, "\x1e".join(templates), "\x1e".join(names)):
            h.update(part.encode())
            h.update(b"\x1f")
        return h.hexdigest()

    def get(
        self,
        clip_model: nn.Module,
        names: Sequence[str],
        templates: Sequence[str],
        synonyms: str = "average",
    ) -> torch.Tensor:
        """Cached (T, P, C) fp32 features on the CLIP model's device."""
        device = clip_model.token_embedding.weight.device
        key = self.key(text_tower_fingerprint(clip_model), names, templates, synonyms)
        feats = self._memory.get(key)
        if feats is None and self.cache_dir:
            path = os.path.join(self.cache_dir, f"{key}.pt")
            if os.path.exists(path):
                try:
                    feats = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as exc:  # a broken cache file is recomputed, never trusted
                    logger.warning("ignoring unreadable text-feature cache %s (%s)", path, exc)
                    feats = None
                if feats is not None and feats.shape[:2] != (len(names), len(templates)):
                    logger.warning("ignoring text-feature cache %s with shape %s", path, tuple(feats.shape))
                    feats = None
        if feats is None:
            with torch.no_grad():
                feats = encode_class_names(clip_model, names, templates, synonyms).float()
            if self.cache_dir:
                self._save(feats, os.path.join(self.cache_dir, f"{key}.pt"))
        feats = feats.to(device)
        self._memory[key] = feats
        return feats

    @staticmethod
    def _save(feats: torch.Tensor, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        os.close(fd)
        try:
            torch.save(feats.detach().cpu(), tmp)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("could not write text-feature cache %s (%s)", path, exc)
            if os.path.exists(tmp):
                os.remove(tmp)
