"""One-call config construction for train_net and tools: defaults + file + overrides + freeze."""
from __future__ import annotations

from typing import Optional, Sequence

from .defaults import get_cfg
from .node import CfgNode
from .resolve import validate_framework_keys


def load_cfg(config_file: Optional[str] = None, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain, if given), then ``opts``; not frozen."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    validate_framework_keys(cfg)
    return cfg


def setup_cfg(config_file: Optional[str], opts: Optional[Sequence[str]] = None) -> CfgNode:
    """Like :func:`load_cfg` but frozen, as the official ``setup(args)`` returns it.

    Args:
        config_file: YAML path; ``None``/"" uses the defaults only.
        opts: ``[KEY, VALUE, ...]`` overrides, e.g. ``["SOLVER.BASE_LR", "0.1"]``.
    """
    cfg = load_cfg(config_file, opts)
    cfg.freeze()
    return cfg
