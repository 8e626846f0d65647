"""``partcatseg-demo``: segment your own images with your own vocabulary and save pictures.

    partcatseg-demo --config-file configs/zero_shot/partcatseg_voc.yaml \\
        --input photos/ 'more/*.jpg' --output out/ \\
        --objects "cat: head, ear, eye, torso, leg, tail; dog: head, ear" \\
        MODEL.WEIGHTS partcatseg_voc

Per image it writes ``<name>_overlay.png`` (parts coloured, object outlines, a legend of the classes
present), ``<name>_labels.png`` (class index per pixel; 255, or 65535 for more than 254 classes,
= background/none) and ``<name>.json`` (classes present with pixel areas and mean scores).
Trailing ``KEY VALUE`` pairs override the config (detectron2 style). ``--config-file`` may be omitted
when ``MODEL.WEIGHTS`` names a released checkpoint that belongs to a config (``partcatseg_voc``).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["main", "run", "build_parser", "split_opts", "find_images"]

PROG = "partcatseg-demo"
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
_REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DemoError(Exception):
    """A user error: reported as ``partcatseg-demo: error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Open-vocabulary part (PartCATSeg) or semantic (CAT-Seg) segmentation of your own images.",
        epilog="Trailing KEY VALUE pairs override config keys, e.g. MODEL.WEIGHTS partcatseg_voc MODEL.DEVICE cpu.",
    )
    p.add_argument("--config-file", default="", help="model config (YAML); optional when MODEL.WEIGHTS is a released name")
    p.add_argument("--input", nargs="+", required=True, help="image files, directories or glob patterns")
    p.add_argument("--output", required=True, help="directory for the overlays, label PNGs and JSON files")
    vocab = p.add_argument_group("vocabulary (default: the config's test set)")
    vocab.add_argument("--vocabulary", help="a dataset (pascal_part_116, ade_part_234, partimagenet, partimagenet_ood; "
                       "coco_stuff_171, ade150, ... for CAT-Seg) or a JSON file of class names")
    vocab.add_argument("--objects", help='objects and their parts: "cat: head, ear, tail; dog: head, ear" (part models)')
    vocab.add_argument("--classes", help='class names for CAT-Seg: "cat, dog|puppy, grass" (| separates synonyms)')
    vocab.add_argument("--object", help="only this object's classes (Oracle-style), e.g. --object cat")
    vocab.add_argument("--object-mask", help="PNG mask (non-zero = object) of the image's size; labels only inside it")
    vocab.add_argument("--no-background", action="store_true", help="never predict background (every pixel gets a class)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--max-side", type=int, default=0, help="predict at most at this longer side, then resize (0 = full size)")
    p.add_argument("--alpha", type=float, default=0.55, help="overlay opacity (default 0.55)")
    p.add_argument("--no-outlines", action="store_true", help="do not draw object outlines")
    p.add_argument("--save-scores", action="store_true", help="also write <name>_scores.npz (float16 per-class scores)")
    p.add_argument("--device", help="shortcut for MODEL.DEVICE (cpu, cuda, cuda:1, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help=argparse.SUPPRESS)
    return p


def split_opts(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split off trailing config overrides: from the first ``KEY.NAME``-looking token (or ``--opts``)."""
    argv = list(argv)
    if "--opts" in argv:
        i = argv.index("--opts")
        return argv[:i], argv[i + 1 :]
    for i, token in enumerate(argv):
        if _KEY_RE.match(token):
            return argv[:i], argv[i:]
    return argv, []


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Expand files, directories (their image files, sorted) and glob patterns; errors name the input."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not files:
                raise FileNotFoundError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in directory {item}")
            found += files
        elif any(c in item for c in "*?["):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True) if os.path.isfile(p))
            if not files:
                raise FileNotFoundError(f"No files match {item!r}")
            found += files
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"Input not found: {item}")
    unique: list[Path] = []
    seen = set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _model_task(cfg) -> str:
    """The configured model's task ("part" or "semantic"), known before the model is built."""
    from ..modeling import meta_architecture_class

    return meta_architecture_class(cfg).task


def _config_file(args, opts: list[str]) -> str:
    if args.config_file:
        return args.config_file
    from ..weights import WEIGHTS

    weights = dict(zip(opts[::2], opts[1::2])).get("MODEL.WEIGHTS", "")
    spec = WEIGHTS.get(weights)
    if spec is not None and spec.config:
        path = _REPO_ROOT / spec.config
        if path.is_file():
            return str(path)
        raise DemoError(f"MODEL.WEIGHTS={weights} belongs to {spec.config}, which is not here; pass --config-file")
    raise DemoError("--config-file is required (or MODEL.WEIGHTS naming a released checkpoint, e.g. partcatseg_voc)")


def _resolve_vocabulary(args, task: str):
    """Validate the vocabulary options before the model is built (fast, clear errors); None = the config's."""
    from ..vocab import resolve_vocabulary

    if task == "part":
        if args.classes is not None:
            raise DemoError("--classes is for semantic models (CAT-Seg); part models take --objects or --vocabulary")
    else:
        if args.objects is not None:
            raise DemoError("--objects needs a part model (PartCATSeg or the CAT-Seg baseline); CAT-Seg takes --classes")
        if args.object is not None:
            raise DemoError("--object needs a part model; CAT-Seg semantic segmentation has no objects")
    if args.vocabulary is None and args.objects is None and args.classes is None:
        return None
    resolved = resolve_vocabulary(args.vocabulary, objects=args.objects, classes=args.classes, task=task)
    if args.object is not None and args.object not in resolved.objects:
        raise DemoError(f"--object {args.object!r} is not an object of the vocabulary; objects: {list(resolved.objects)}")
    return resolved


def _label_png(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    if num_classes <= 254:
        return np.where(labels < 0, 255, labels).astype(np.uint8), 255
    if num_classes > 65534:
        raise DemoError(f"{num_classes} classes do not fit a 16-bit label PNG")
    return np.where(labels < 0, 65535, labels).astype(np.uint16), 65535


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    used: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem
        n = used.get(stem, 0)
        used[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n + 1}")
    return stems


def _write_outputs(pred, image: np.ndarray, stem: str, out_dir: Path, args, extra: dict) -> dict:
    from PIL import Image

    from ..visualize import render_overlay

    rendered = render_overlay(image, pred.labels, pred.class_names, alpha=args.alpha, outlines=not args.no_outlines)
    overlay_path = out_dir / f"{stem}_overlay.png"
    labels_path = out_dir / f"{stem}_labels.png"
    json_path = out_dir / f"{stem}.json"
    Image.fromarray(rendered.image).save(overlay_path)
    encoded, none_value = _label_png(pred.labels, len(pred.class_names))
    Image.fromarray(encoded).save(labels_path)
    summary = pred.summary()
    summary.update(extra)
    summary["legend"] = rendered.legend
    summary["legend_complete"] = rendered.legend_complete
    summary["files"] = {"overlay": overlay_path.name, "labels": labels_path.name}
    summary["label_png"] = {"value": "index into vocabulary_classes", "background_or_none": none_value}
    if args.save_scores and pred.scores is not None:
        scores_path = out_dir / f"{stem}_scores.npz"
        np.savez_compressed(scores_path, scores=pred.scores.astype(np.float16), class_names=np.array(pred.class_names))
        summary["files"]["scores"] = scores_path.name
    summary["vocabulary_classes"] = list(pred.class_names)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(argv: Optional[Sequence[str]] = None) -> list[dict]:
    """The demo without the error-to-exit-status translation of :func:`main`; returns the JSON summaries."""
    from ..config import setup_cfg

    argv = list(sys.argv[1:] if argv is None else argv)
    cli_args, opts = split_opts(argv)
    args = build_parser().parse_args(cli_args)
    opts = list(opts) + list(args.opts or [])
    if len(opts) % 2:
        raise DemoError(f"config overrides must be KEY VALUE pairs; got {opts}")
    if args.device:
        opts += ["MODEL.DEVICE", args.device]
    if args.batch_size < 1:
        raise DemoError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise DemoError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.max_side < 0:
        raise DemoError(f"--max-side must be >= 0, got {args.max_side}")
    config_file = _config_file(args, opts)
    cfg = setup_cfg(config_file, opts)
    model_task = _model_task(cfg)
    vocabulary = _resolve_vocabulary(args, model_task)
    images = find_images(args.input)

    from tqdm import tqdm

    from ..inference import Predictor, build_model_with_weights, load_image

    model = build_model_with_weights(cfg)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(cfg, model=model, vocabulary=vocabulary)
    task: dict = {}
    if model_task == "part":
        if args.object is not None:
            predictor.object_index(args.object)  # validates against the final vocabulary
        task = {"object": args.object, "background": False if args.no_background else None}
    if args.object_mask:
        task["object_mask"] = args.object_mask
    extra = {"config": str(config_file), "weights": str(cfg.MODEL.WEIGHTS)}
    stems = _unique_stems(images)
    summaries = []
    with tqdm(total=len(images), unit="img", desc=PROG, disable=args.quiet) as bar:
        preds = predictor.predict_iter(
            [str(p) for p in images],
            batch_size=args.batch_size,
            keep_scores=args.save_scores,
            max_side=args.max_side or None,
            **task,
        )
        for path, stem, pred in zip(images, stems, preds):
            image, _ = load_image(str(path))
            summaries.append(_write_outputs(pred, image, stem, out_dir, args, extra))
            bar.update(1)
    return summaries


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: 0 on success, 2 on a usage/input error (message on stderr)."""
    from ..config import ConfigError
    from ..vocab import VocabularyError
    from ..weights import WeightsError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summaries = run(argv)
    except (DemoError, ConfigError, WeightsError, FileNotFoundError, VocabularyError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {3 * len(summaries)} files for {len(summaries)} image(s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
