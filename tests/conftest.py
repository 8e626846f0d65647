"""Shared test fixtures: tiny model configs and paths to the copied reference data."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"
sys.path.insert(0, str(TESTS))  # helper modules: tests/weights_rule.py, tests/filewrap.py

# The pytest process runs hundreds of unrelated workloads: keep glibc's default allocation policy in
# it (the tools' heap-only policy keeps every freed block). Jobs the tests start as subprocesses
# (train_net.py, the demo, the benchmark) apply the tools' default policy as users get it.
from partcatseg import runtime as _runtime  # noqa: E402

_runtime.tune_allocator(False)

# A reduced-width PartCATSeg built from the same code: 6x6 feature grid, tiny CLIP and DINOv2.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.CLIP_ARCH", "tiny",
    "MODEL.CLIP_RESOLUTION", "96",
    "MODEL.DINO_ARCH", "tiny",
    "MODEL.DINO_INPUT_SIZE", "84",
    "MODEL.PROMPT_ENSEMBLE_TYPE", "single",
    "MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION", "[6, 6]",
    "MODEL.SEM_SEG_HEAD.WINDOW_SIZES", "3",
    "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM", "64",
    "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_PROJ_DIM", "32",
    "MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_DIM", "48",
    "MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_PROJ_DIM", "32",
    "MODEL.SEM_SEG_HEAD.DECODER_DIMS", "[32, 16]",
    "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_DIMS", "[48, 48]",
    "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_PROJ_DIMS", "[8, 8]",
    "MODEL.SEM_SEG_HEAD.HIDDEN_DIMS", "32",
]


@pytest.fixture
def tiny_partcatseg_cfg(tmp_path):
    """Frozen config of a tiny PartCATSeg on the Pascal-Part-116 vocabularies."""
    from partcatseg.config import setup_cfg

    opts = TINY_OPTS + ["MODEL.TEXT_CACHE_DIR", str(tmp_path / "text_cache"), "OUTPUT_DIR", str(tmp_path / "out")]
    return setup_cfg(str(REPO / "configs/zero_shot/partcatseg_voc.yaml"), opts)


def read_tsv(name: str) -> dict[str, tuple]:
    """Reference state-dict keys -> shapes from tests/data/<name>.tsv."""
    out = {}
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


@pytest.fixture(autouse=True)
def _offline_hubs(monkeypatch):
    """Tests never touch the network: hub libraries are told they are offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield



@pytest.fixture(scope="session")
def small_toy_root(tmp_path_factory):
    """A small toy part dataset (24 training, 6 validation images) for end-to-end tool runs."""
    from partcatseg.data.datasets import make_toy_dataset

    root = tmp_path_factory.mktemp("small_toy")
    make_toy_dataset(str(root / "ToyPart"), seed=0, num_train=24, num_val=6)
    return root


def run_tool(args, dataset_root, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` from the checkout with ``$DETECTRON2_DATASETS`` set; fails with its output."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(dataset_root), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def logs():
    """Records of the partcatseg loggers (attached directly: independent of other tests' propagation)."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record)

    handler, lg = Keep(logging.DEBUG), logging.getLogger("partcatseg")
    old = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    yield got
    lg.removeHandler(handler)
    lg.setLevel(old)
