"""Random-number state: seeding, determinism switches, and snapshots for exact resume.

Snapshots hold only tensors, ints, floats, strings and tuples, so a checkpoint that contains them
still loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
from datetime import datetime
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_all_rng", "set_deterministic"]

logger = logging.getLogger(__name__)


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed python, numpy and torch (all devices); ``None`` draws a fresh seed. Returns the seed."""
    if seed is None:
        seed = (os.getpid() + int(datetime.now().strftime("%S%f")) + int.from_bytes(os.urandom(2), "big")) % 2**31
        logger.info("Using a generated random seed %d", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)  # inherited by worker processes started later
    return seed


def set_deterministic(enabled: bool = True, *, algorithms: bool = False) -> None:
    """Trade speed for run-to-run reproducibility.

    ``enabled`` switches cuDNN to deterministic kernels and turns off autotuning (what the
    official part-catseg ``random_seed`` does). ``algorithms`` additionally makes torch prefer
    deterministic implementations everywhere (warning, not failing, where none exists).
    """
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False
    if algorithms:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(enabled, warn_only=True)


def capture_rng_state() -> Dict[str, Any]:
    """The python, numpy, torch CPU and (if initialised) CUDA generator states of this process."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:
            logger.warning("checkpoint holds CUDA RNG states of %d device(s) but %d are visible; "
                           "CUDA random streams are not restored", len(saved), torch.cuda.device_count())
