"""Shared test fixtures: tiny model configs and paths to the copied reference data."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"
sys.path.insert(0, str(TESTS))  # tests/weights_rule.py

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

