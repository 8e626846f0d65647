"""Speed and memory of a configured model (``tools/benchmark.py`` is the command line).

* ``phases``   – the phases (build, text features cold/cached, inference, training step, accuracy,
  official side by side), each run in its own process by :func:`run_benchmark`;
* ``measure``  – medians with quartiles, per-section peak RSS and CUDA peaks;
* ``flops``    – executed FLOPs, the measured matmul peak, achieved GFLOP/s and the fraction of the peak;
* ``accuracy`` – every speed mode's outputs against the default fp32 path;
* ``official`` – the official PartCATSeg inference procedure around the official network code;
* ``report``   – the plain-text table.

The benchmark talks to models only through the model protocol (``partcatseg.modeling.SegmentationModel``).
"""
from . import phases
from .phases import (
    EXTRA_PHASES,
    INFERENCE_VARIANT_OPTS,
    OFFICIAL_PHASES,
    PHASES,
    SCHEMA,
    TRAIN_VARIANT_OPTS,
    BenchmarkSpec,
    RandomTextFeatures,
    run_benchmark,
    run_phase,
    synthetic_part_vocabulary,
    train_variant_opts,
    inference_variant_opts,
)
from .measure import current_rss_mb, peak_rss_mb, summarize
from .report import format_table

__all__ = [*phases.__all__, "format_table", "summarize", "peak_rss_mb", "current_rss_mb"]
