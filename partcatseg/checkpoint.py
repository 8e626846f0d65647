"""Checkpoints in detectron2's format, loaded and saved safely.

* Loads ``{"model": state_dict, ...}`` files (detectron2 / the official releases) or bare state
  dicts, strips a DDP ``module.`` prefix, and converts between CAT-Seg CVPR's split
  ``attn.{q,k,v}_proj_weight`` and the fused ``attn.in_proj_weight`` in whichever direction the model
  needs.
* Shape-mismatched entries are skipped and reported, as detectron2 does (this is how the official
  PartCATSeg training starts from CAT-Seg's ``model_final_base.pth``), and every load returns a
  :class:`LoadReport` that is also logged.  A file sharing no key with the model is an error.
* Saves are atomic (temporary file + rename), and ``last_checkpoint`` is updated only after the
  checkpoint file is complete, so a crash never leaves a truncated "latest" checkpoint.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from torch import nn

__all__ = ["Checkpointer", "LoadReport", "CheckpointError", "convert_qkv_layout", "atomic_torch_save"]

logger = logging.getLogger(__name__)

_QKV = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


class CheckpointError(RuntimeError):
    """A file that cannot be used as a checkpoint for this model."""


@dataclass
class LoadReport:
    """What a load did: keys the model lacks, keys the file lacks, and skipped shape mismatches."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"checkpoint {self.path}: loaded {len(self.loaded)} entries, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched (skipped) {len(self.shape_mismatch)}"
        ]
        for title, items in (
            ("shape mismatch (file vs model)", [f"{k}: {a} vs {b}" for k, a, b in self.shape_mismatch]),
            ("missing in file (left at their current values)", _group(self.missing)),
            ("unexpected in file (ignored)", _group(self.unexpected)),
        ):
            if items:
                lines.append(f"  {title}:")
                lines += [f"    {s}" for s in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)


def _group(keys: list[str]) -> list[str]:
    """Collapse keys by their first four components for readable reports."""
    groups: dict[str, int] = {}
    for k in keys:
        prefix = ".".join(k.split(".")[:4])
        groups[prefix] = groups.get(prefix, 0) + 1
    return [f"{p}.* ({n})" if n > 1 else p for p, n in groups.items()]


def convert_qkv_layout(state_dict: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Fuse or split attention input projections so the file's layout matches the model's."""
    out = dict(state_dict)
    for key in list(state_dict):
        if key.endswith(".q_proj_weight"):
            base = key[: -len("q_proj_weight")]
            fused = base + "in_proj_weight"
            parts = [base + name for name in _QKV]
            if fused in model_keys and key not in model_keys and all(p in state_dict for p in parts):
                out[fused] = torch.cat([state_dict[p] for p in parts], dim=0)
                for p in parts:
                    out.pop(p)
        elif key.endswith(".in_proj_weight"):
            base = key[: -len("in_proj_weight")]
            if base + "q_proj_weight" in model_keys and key not in model_keys:
                for name, chunk in zip(_QKV, state_dict[key].chunk(3, dim=0)):
                    out[base + name] = chunk
                out.pop(key)
    return out


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pth")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_checkpoint_file(path: str) -> dict[str, Any]:
    """``torch.load`` a checkpoint with errors that say what is wrong with the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint file {path} is empty (0 bytes): an interrupted copy or download?")
    def fail(exc: BaseException) -> CheckpointError:
        return CheckpointError(
            f"cannot read checkpoint {path} ({os.path.getsize(path)} bytes): {type(exc).__name__}: {exc}. "
            "The file is truncated or is not a PyTorch checkpoint."
        )

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise fail(exc) from exc
        # detectron2 / official files may pickle non-tensor objects; the user chose this file
        logger.warning("%s holds arbitrary Python objects; loading it with weights_only=False", path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any decoding failure means an unusable file
            raise fail(exc2) from exc2
    except Exception as exc:  # noqa: BLE001 - any decoding failure means an unusable file
        raise fail(exc) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, expected a dict (state dict)")
    if "model" not in data:
        data = {"model": data}
    if not isinstance(data["model"], dict):
        raise CheckpointError(f"checkpoint {path}: 'model' is a {type(data['model']).__name__}, expected a dict")
    return data


class Checkpointer(_FvcoreCheckpointer):
    """fvcore's Checkpointer with conversion, a load report, safe reads and atomic writes.

    ``Checkpointer(model).load(path)`` loads weights only (returns the remaining checkpoint dict,
    e.g. ``iteration``); pass ``checkpointables=[...]`` to also restore optimizer/scheduler state.
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool = True, **checkpointables: Any):
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.last_report: Optional[LoadReport] = None

    # ------------------------------------------------------------------ loading
    def _load_file(self, f: str) -> dict[str, Any]:
        data = read_checkpoint_file(f)
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in data["model"].items()}
        data["model"] = convert_qkv_layout(state, set(self.model.state_dict()))
        data["__path__"] = f
        return data

    def _load_model(self, checkpoint: Any):
        path = checkpoint.pop("__path__", "<memory>")
        file_keys = set(checkpoint["model"])
        model_keys = set(self.model.state_dict())
        if not file_keys & model_keys:
            sample = sorted(file_keys)[:3]
            raise CheckpointError(
                f"checkpoint {path} shares no parameter name with {type(self.model).__name__} "
                f"(file keys look like {sample}; model keys like {sorted(model_keys)[:3]}): wrong model or config?"
            )
        incompatible = super()._load_model(checkpoint)
        report = LoadReport(
            path=path,
            missing=sorted(incompatible.missing_keys),
            unexpected=sorted(incompatible.unexpected_keys),
            shape_mismatch=[(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes],
        )
        skipped = {k for k, _, _ in report.shape_mismatch}
        report.loaded = sorted((file_keys & model_keys) - skipped)
        self.last_report = report
        (logger.info if report.clean else logger.warning)(report.summary())
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        pass  # replaced by LoadReport.summary(), logged in _load_model

    def load_weights(self, path: str, *, strict: bool = False) -> LoadReport:
        """Load only the model weights and return the report; ``strict`` turns any mismatch into an error."""
        self.load(path, checkpointables=[])
        report = self.last_report
        if strict and not report.clean:
            raise CheckpointError("strict load failed:\n" + report.summary())
        return report

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        atomic_torch_save(data, path)
        self.logger.info("Saved checkpoint to %s", path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        _atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)
