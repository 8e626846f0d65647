"""Class-name text features from the model's own CLIP text tower, cached in memory and on disk.

The official code encodes every class name with 80 templates at model construction (fp16, on
CUDA, with downloaded OpenAI weights).  We encode lazily, in fp32, with whatever text tower the
checkpoint holds, and cache the result under a key made of the text-tower weights, the templates and
the class names, so a second start reads a small file instead of running the text encoder.

A cache file is never trusted blindly: it is read with ``torch.load(weights_only=True)`` (nothing
beyond tensors and plain containers is unpickled) and used only if it is a current-format entry for
exactly this key whose features are a finite float32 (T, P, C) tensor -- C the text tower's output
width -- matching the SHA-256 stored with them.  Anything else is recomputed and rewritten.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .clip import tokenize
from .grad_checkpoint import checkpointed

__all__ = [
    "encode_tokens",
    "encode_prompts",
    "encode_class_names",
    "text_tower_fingerprint",
    "forget_text_fingerprint",
    "TextFeatureCache",
    "read_cache_entry",
    "CACHE_FORMAT_VERSION",
]

logger = logging.getLogger(__name__)


def encode_tokens(clip_model: nn.Module, tokens: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
    """CLIP ``encode_text`` over only the first L positions, L = the last end-of-text position + 1.

    The text transformer is causal and pools the end-of-text token, so positions after it never
    influence the result: dropping them gives the same embedding for a fraction of the cost
    (prompts are ~10 tokens of the 77-token context).  ``grad_checkpointing`` checkpoints the text
    blocks one by one when gradients are recorded (CAT-Seg CVPR trains the text tower).
    """
    eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest token id
    length = int(eot.max()) + 1
    x = clip_model.token_embedding(tokens[:, :length])
    x = x + clip_model.positional_embedding[:length]
    mask = clip_model.attn_mask[:length, :length] if clip_model.attn_mask is not None else None
    transformer = clip_model.transformer
    if grad_checkpointing and torch.is_grad_enabled():
        # open_clip's Transformer.forward, block by block (its own flag would checkpoint no-grad calls too)
        x = x if transformer.batch_first else x.transpose(0, 1).contiguous()
        for block in transformer.resblocks:
            x = checkpointed(block, x, attn_mask=mask, enabled=True)
        x = x if transformer.batch_first else x.transpose(0, 1)
    else:
        x = transformer(x, attn_mask=mask)
    x = clip_model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    return x @ clip_model.text_projection


def encode_prompts(
    clip_model: nn.Module, prompts: Sequence[str], batch_size: int = 256, grad_checkpointing: bool = False
) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (N, C) of ``prompts`` (gradients flow if enabled)."""
    device = clip_model.token_embedding.weight.device
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenize(prompts[start : start + batch_size]).to(device)
        out.append(F.normalize(encode_tokens(clip_model, tokens, grad_checkpointing), dim=-1))
    return torch.cat(out, dim=0)


def encode_class_names(
    clip_model: nn.Module,
    names: Sequence[str],
    templates: Sequence[str],
    synonyms: str = "average",
    grad_checkpointing: bool = False,
) -> torch.Tensor:
    """Text features (T, P, C) for T class names and P templates.

    A name ``"a, b"`` holds synonyms: ``synonyms="average"`` averages the normalised embeddings of all
    synonyms per template and re-normalises (PartCATSeg, pre-CVPR CAT-Seg); ``"first"`` keeps only the
    first synonym (CAT-Seg CVPR).  ``grad_checkpointing``: see :func:`encode_tokens`.
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
    emb = encode_prompts(clip_model, prompts, grad_checkpointing=grad_checkpointing)
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


CACHE_FORMAT_VERSION = 2
_CACHE_FORMAT = "partcatseg-text-features"


def _features_digest(feats: torch.Tensor) -> str:
    """SHA-256 of a contiguous CPU tensor's shape, dtype and bytes."""
    h = hashlib.sha256()
    h.update(f"{tuple(feats.shape)}|{feats.dtype}|".encode())
    h.update(feats.contiguous().numpy())  # the buffer itself: no copy of a large tensor
    return h.hexdigest()


def _cache_entry(key: str, feats: torch.Tensor) -> dict[str, Any]:
    feats = feats.detach().to("cpu", torch.float32).contiguous()
    t, p, c = feats.shape
    return {
        "format": _CACHE_FORMAT,
        "version": CACHE_FORMAT_VERSION,
        "key": key,
        "names": int(t),
        "templates": int(p),
        "width": int(c),
        "sha256": _features_digest(feats),
        "features": feats,
    }


def _entry_problem(entry: Any, key: str, shape: tuple[int, int, int]) -> Optional[str]:
    """None if ``entry`` is a valid cache entry for ``key`` with features of ``shape``, else why not."""
    if isinstance(entry, torch.Tensor):
        return f"old-format entry (a bare {tuple(entry.shape)} tensor without checksum)"
    if not isinstance(entry, dict):
        return f"holds a {type(entry).__name__}, not a cache entry"
    if entry.get("format") != _CACHE_FORMAT or entry.get("version") != CACHE_FORMAT_VERSION:
        return (f"not a version-{CACHE_FORMAT_VERSION} cache entry "
                f"(format {entry.get('format')!r}, version {entry.get('version')!r})")
    if entry.get("key") != key:
        return f"entry for another key ({str(entry.get('key'))[:16]}...)"
    feats = entry.get("features")
    if not isinstance(feats, torch.Tensor):
        return f"features are a {type(feats).__name__}, not a tensor"
    if feats.dtype != torch.float32:
        return f"features are {feats.dtype}, expected torch.float32"
    if feats.layout != torch.strided or feats.is_quantized or feats.device.type != "cpu":
        return f"features are not a plain CPU tensor ({feats.layout}, {feats.device})"
    if tuple(feats.shape) != tuple(shape):
        return f"features have shape {tuple(feats.shape)}, expected {tuple(shape)} (names, templates, width)"
    if (entry.get("names"), entry.get("templates"), entry.get("width")) != tuple(shape):
        return "recorded names/templates/width counts do not match the request"
    if not bool(torch.isfinite(feats).all()):
        return f"features contain {int((~torch.isfinite(feats)).sum())} NaN/inf value(s)"
    digest = entry.get("sha256")
    if not isinstance(digest, str) or digest != _features_digest(feats):
        return "checksum mismatch (the features were modified or corrupted on disk)"
    return None


def _short_error(exc: BaseException) -> str:
    """One informative line: for a weights-only refusal, what was refused (e.g. the pickled global)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()[0].split(". ")[0]
        return f"refused by the weights-only unpickler: {detail[:200]}"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def read_cache_entry(path: str, key: str, shape: tuple[int, int, int]) -> tuple[Optional[torch.Tensor], Optional[str]]:
    """Read and validate one cache file: ``(features, None)`` if usable, ``(None, reason)`` if not,
    ``(None, None)`` if there is no such file."""
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file (0 bytes)"
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None, None
    except Exception as exc:  # noqa: BLE001 - anything unreadable is recomputed, never trusted
        return None, f"unreadable ({_short_error(exc)})"
    problem = _entry_problem(entry, key, shape)
    if problem is not None:
        return None, problem
    return entry["features"].contiguous(), None


class TextFeatureCache:
    """Memory + disk cache of :func:`encode_class_names` results.

    ``cache_dir=None`` disables the disk level (memory only).  Each file carries its key, the
    counts of names/templates, the width and a SHA-256 of the features; a file that fails any
    check (see :func:`read_cache_entry`) is recomputed, with one warning naming it and the reason,
    and rewritten.  Files are written atomically (temporary file + fsync + rename), so a reader --
    another process included -- sees either a complete entry or none, and a failed write leaves no
    temporary file.  If the directory cannot be written (read-only, full, ...), one warning is
    logged and the run goes on with the memory cache only (existing valid entries are still read).
    """

    def __init__(self, cache_dir: Optional[str] = None) -> None:
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else None
        self._memory: dict[str, torch.Tensor] = {}
        self.write_disabled: Optional[str] = None  # why disk writes stopped, if they did
        self._swept = False

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

    def path_for(self, key: str) -> Optional[str]:
        return os.path.join(self.cache_dir, f"{key}.pt") if self.cache_dir else None

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
        path = self.path_for(key)
        if feats is None and path is not None:
            shape = (len(names), len(templates), int(clip_model.text_projection.shape[-1]))
            feats, problem = read_cache_entry(path, key, shape)
            if problem is not None:
                log = logger.info if problem.startswith("old-format") else logger.warning
                log("text-feature cache %s: %s; recomputing it", path, problem)
        if feats is None:
            with torch.no_grad():
                feats = encode_class_names(clip_model, names, templates, synonyms).float()
            if path is not None:
                self._save(key, feats, path)
        feats = feats.to(device)
        self._memory[key] = feats
        return feats

    def _save(self, key: str, feats: torch.Tensor, path: str) -> None:
        if self.write_disabled is not None:
            return
        from ..checkpoint import atomic_write, remove_stale_temporaries

        entry = _cache_entry(key, feats)
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            if not self._swept:
                self._swept = True
                remove_stale_temporaries(self.cache_dir)
            atomic_write(path, lambda f: torch.save(entry, f), what="text-feature cache entry")
        except (OSError, RuntimeError) as exc:
            self.write_disabled = str(exc)
            logger.warning("cannot write the text-feature cache in %s (%s); continuing without writing it: "
                           "text features are kept in memory for this run only", self.cache_dir, exc)
