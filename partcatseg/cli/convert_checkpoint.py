"""``partcatseg-convert-checkpoint`` (``tools/convert_checkpoint.py``): a checkpoint as a portable folder.

    python tools/convert_checkpoint.py partcatseg_voc --output hub/partcatseg_voc
    python tools/convert_checkpoint.py output/toy_demo/model_final.pth --output hub/toy   # config.yaml beside it
    python tools/convert_checkpoint.py my.pth --config-file configs/zero_shot/partcatseg_ade.yaml \\
        --output hub/mine --results output/x/inference/results_table.txt  [KEY VALUE ...]

Writes ``model.safetensors`` (every tensor, no pickle), ``config.yaml`` (the full config),
``vocabulary.json`` (the training and test class lists and object lists) and ``README.md`` (the model
card: the architecture, the vocabularies, the evaluation table when known, this command). Loading the
folder (``Predictor.from_pretrained(folder)``) gives outputs bit-identical to the checkpoint's.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import UsageError, run_cli
from .overrides import parse_with_overrides

__all__ = ["main", "build_parser", "PROG"]

PROG = "partcatseg-convert-checkpoint"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a released or trained checkpoint into a portable folder: model.safetensors, "
                    "config.yaml, vocabulary.json and a model card (README.md).",
        epilog="Trailing KEY VALUE pairs override config keys (stored in the folder's config.yaml).",
    )
    p.add_argument("weights", help="a checkpoint (.pth / .safetensors) or a released weights name (partcatseg_voc)")
    p.add_argument("--output", required=True, help="the folder to write (must be empty unless --force)")
    p.add_argument("--config-file", default=None,
                   help="the checkpoint's config (default: the released name's config, or config.yaml beside the file)")
    p.add_argument("--results", default=None,
                   help="evaluation results for the card: results_table.txt, part_seg_results.json or a .md file "
                        "(default: inference/ results next to a trained checkpoint)")
    p.add_argument("--title", default="", help="the card's title (default: the folder name)")
    p.add_argument("--description", default="", help="one sentence for the card saying what the model is")
    p.add_argument("--force", action="store_true", help="write into a non-empty --output folder")
    return p


def _main(argv: list) -> int:
    from ..inference.hub import command_line, convert_checkpoint
    args, opts = parse_with_overrides(build_parser(), argv)
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
        raise UsageError(f"--output {out} is not empty; pass --force to overwrite its files" if out.is_dir()
                         else f"--output {out} exists and is not a folder")
    result = convert_checkpoint(
        args.weights, args.output, config_file=args.config_file, opts=opts, results=args.results,
        title=args.title, description=args.description, overwrite=args.force,
        command=command_line("python tools/convert_checkpoint.py", argv),
    )
    report = result.report
    print(f"{PROG}: {result.facts.get('meta_architecture')} ({result.facts.get('tensors')} tensors; "
          f"{len(report.loaded)} loaded from {args.weights}, {len(report.missing)} missing, "
          f"{len(report.unexpected)} unexpected)")
    for path in (result.weights, result.config, result.vocabulary, result.card):
        print(f"  wrote {path}")
    if result.results_source:
        print(f"  evaluation table from {result.results_source}")
    print(f"load it with Predictor.from_pretrained({str(result.folder)!r}) or partcatseg-app --model {result.folder}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (the common error path: user errors in one line, exit 2 / 1)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
