"""``tools/benchmark.py``: speed and memory of a configured model (see :mod:`partcatseg.benchmark`)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .errors import UsageError, run_cli
from ..benchmark import (EXTRA_PHASES, OFFICIAL_PHASES, PHASES, BenchmarkSpec, format_table, inference_variant_opts,
                         run_benchmark, run_phase, train_variant_opts)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Speed and memory of a model config (any meta-architecture): the measured matmul peak, build, "
                    "text features (cold and cached), inference latency/throughput at batch 1 and N, training steps "
                    "(with checkpointing / mixed precision / accumulation variants), peak memory, achieved GFLOP/s "
                    "and their fraction of the peak.")
    p.add_argument("--config-file", required=True, help="YAML config (e.g. configs/zero_shot/partcatseg_voc.yaml)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=2,
                   help="batch size N for throughput, and the images of one forward/backward of the train step")
    p.add_argument("--image-size", type=int, nargs=2, default=(384, 512), metavar=("H", "W"),
                   help="synthetic image size (the model squashes to its encoder size; outputs come back at H x W)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--num-classes", type=int, default=0,
                   help="replace the test vocabulary by N synthetic 'object's part' classes (class-scaling studies)")
    p.add_argument("--random-text", action="store_true",
                   help="random unit text features instead of encoding the vocabulary (for --num-classes scaling "
                        "runs: the head's cost does not depend on the values; text_* phases then time nothing real)")
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES + OFFICIAL_PHASES + EXTRA_PHASES))
    p.add_argument("--train-variants", nargs="+", default=["default"], metavar="VARIANT",
                   help="train_step runs, each in its own process: default, checkpointing (activation checkpointing), "
                        "bf16 / fp16 (SOLVER.AMP), accumulateN (N micro-batches of --batch-size per optimizer step), "
                        "joined with '+', e.g. checkpointing+bf16")
    p.add_argument("--inference-variants", nargs="+", default=["default"], metavar="VARIANT",
                   help="inference runs, each in its own process: default (the config), bf16 / fp16 (TEST.AMP), "
                        "channels_last, compile, joined with '+'")
    p.add_argument("--official-root", default="",
                   help="kaist-cvml/part-catseg checkout: adds the 'official' phase (official procedure, same weights)")
    p.add_argument("--text-cache-dir", default="", help="text-feature cache (default: a fresh temporary directory)")
    p.add_argument("--no-isolate", action="store_true", help="run all phases in this process (shared peak RSS)")
    p.add_argument("--json", default="", help="also write the report to this JSON file")
    p.add_argument("--weights", default="", help="checkpoint to load (default: seeded random weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixture", default="",
                   help="accuracy phase: a parity fixture, e.g. tests/data/partcatseg_voc_single_prompt.pt "
                        "(its config options, image and object; weights from --weights)")
    p.add_argument("--accuracy-modes", nargs="+", default=[], metavar="MODE",
                   help="accuracy phase modes (default: one_pass bf16 fp16 channels_last; also: compile)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return p


def _child_main(argv: Sequence[str]) -> int:
    """Entry of an isolated phase: ``--child-phase NAME --child-spec JSON``; prints the result as JSON."""
    p = argparse.ArgumentParser(prog="partcatseg.cli.benchmark (phase)")
    p.add_argument("--child-phase", required=True)
    p.add_argument("--child-spec", required=True)
    args = p.parse_args(argv)
    spec = BenchmarkSpec(**json.loads(args.child_spec))
    spec.image_size = tuple(spec.image_size)
    print(json.dumps(run_phase(spec, args.child_phase)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/benchmark.py``; user errors (config, weights, vocabulary) are one line and an exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-phase":
        return _child_main(argv)
    return run_cli(_main, argv, "benchmark.py")


def _main(argv: list) -> int:
    args = build_parser().parse_args(argv)
    try:
        for variant in args.train_variants:
            train_variant_opts(variant, 1)
        for variant in args.inference_variants:
            inference_variant_opts(variant)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    phases = list(args.phases)
    if args.official_root:
        phases += [p for p in OFFICIAL_PHASES if p not in phases]
    spec = BenchmarkSpec(
        config_file=args.config_file, opts=list(args.opts), device=args.device, batch_size=args.batch_size,
        image_size=tuple(args.image_size), warmup=args.warmup, repeats=args.repeats, num_classes=args.num_classes,
        text_cache_dir=args.text_cache_dir, official_root=args.official_root, weights=args.weights, seed=args.seed,
        random_text=args.random_text, fixture=args.fixture, accuracy_modes=list(args.accuracy_modes),
        train_variants=list(args.train_variants), inference_variants=list(args.inference_variants),
    )
    report = run_benchmark(spec, phases, isolate=not args.no_isolate, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
