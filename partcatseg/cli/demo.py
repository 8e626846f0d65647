"""``partcatseg-demo``: segment your own images with your own vocabulary and save pictures.

    partcatseg-demo --config-file configs/zero_shot/partcatseg_voc.yaml \\
        --input photos/ 'more/*.jpg' --output out/ \\
        --objects "cat: head, ear, eye, torso, leg, tail; dog: head, ear" \\
        MODEL.WEIGHTS partcatseg_voc

Per image it writes ``<name>_overlay.png`` (parts coloured, object outlines, a legend of the classes
present), ``<name>_labels.png`` (class index per pixel; 255, or 65535 for more than 254 classes,
= background/none) and ``<name>.json`` (classes present with pixel areas and mean scores).
Images are predicted with the longer side reduced to ``--max-side`` (default 1024; 0 = full size);
the outputs keep the input's size. An input that cannot be read is skipped with a warning and
listed in ``skipped.json``; the exit status is 1 only when no image could be processed.
Trailing ``KEY VALUE`` pairs override the config (detectron2 style). ``--config-file`` may be omitted
when ``MODEL.WEIGHTS`` names a released checkpoint that belongs to a config (``partcatseg_voc``).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..runtime import tune_allocator
from .errors import UsageError, run_cli
from .overrides import parse_with_overrides, split_opts  # noqa: F401  (split_opts: part of this module's API)

__all__ = ["main", "run", "build_parser", "split_opts", "find_images", "write_outputs", "DemoError",
           "NothingProcessedError", "DemoResult", "DEFAULT_MAX_SIDE", "LARGE_SIDE"]

PROG = "partcatseg-demo"
_REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_SIDE = 1024  # predict at most at this longer side by default
LARGE_SIDE = 2048  # a warning when an image is predicted at more than this (time and memory grow fast)


class DemoError(UsageError):
    """A user error: reported as ``partcatseg-demo: error: ...`` with exit status 2."""


class NothingProcessedError(Exception):
    """Every input was skipped: reported as ``partcatseg-demo: error: ...`` with exit status 1."""


class DemoResult(list):
    """The JSON summaries of the processed images (a list), plus ``skipped``: ``{"file", "reason"}`` dicts."""

    def __init__(self, summaries=(), skipped=()):
        super().__init__(summaries)
        self.skipped: list[dict] = list(skipped)
        self.skipped_report: Optional[Path] = None  # skipped.json, when something was skipped


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
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help=f"predict with the longer side reduced to at most this many pixels; outputs keep the input "
                        f"size (default {DEFAULT_MAX_SIDE}; 0 = predict at full size: slow and memory-hungry for photos)")
    p.add_argument("--alpha", type=float, default=0.55, help="overlay opacity (default 0.55)")
    p.add_argument("--no-outlines", action="store_true", help="do not draw object outlines")
    p.add_argument("--no-legend", action="store_true", help="no legend: the overlay has exactly the input's size")
    p.add_argument("--save-scores", action="store_true", help="also write <name>_scores.npz (float16 per-class scores)")
    p.add_argument("--device", help="shortcut for MODEL.DEVICE (cpu, cuda, cuda:1, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help=argparse.SUPPRESS)
    return p


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


def _check_device(cfg, args) -> None:
    """A device this machine does not have is a one-line error before the model is built."""
    import torch

    from ..config.resolve import resolve_device

    device = resolve_device(cfg)
    where = f"--device {args.device}" if args.device else f"MODEL.DEVICE={cfg.MODEL.DEVICE}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible: check the driver and CUDA_VISIBLE_DEVICES")
            raise DemoError(f"{where}: CUDA is not available on this machine ({why}); use --device cpu or --device auto")
        index = torch.device(device).index
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise DemoError(f"{where}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DemoError(f"{where}: Apple MPS is not available on this machine; use --device cpu or --device auto")


def _read_object_mask(path: str) -> np.ndarray:
    """The ``--object-mask`` PNG as an (H, W) bool array (non-zero = object), read before the model is built."""
    from PIL import Image

    from ..inference.io import _reason, load_mask

    if not os.path.isfile(path):
        raise DemoError(f"--object-mask {path}: file not found")
    try:
        with Image.open(path) as im:
            size = im.size[::-1]
    except Exception as err:  # noqa: BLE001 - any decoding problem is the same user error
        raise DemoError(f"--object-mask {path}: cannot be read as an image ({_reason(err, path)})") from err
    try:
        return load_mask(path, size, what="--object-mask")
    except ValueError as err:
        raise DemoError(str(err)) from err


def _note(message: str) -> None:
    """One line on stderr that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: {message}", file=sys.stderr)


def _size_notes(path: Path, shape: tuple[int, ...], max_side: int) -> tuple[int, int]:
    """The working size of an image; one info line if it is reduced, one warning if it stays very large."""
    from ..inference.predictor import working_size

    h, w = shape[:2]
    wh, ww = working_size(h, w, max_side or None)
    if (wh, ww) != (h, w):
        _note(f"{path}: {w}x{h} px, predicting at {ww}x{wh} (--max-side {max_side}; the outputs keep "
              f"{w}x{h}; --max-side 0 predicts at full size)")
    if max(wh, ww) > LARGE_SIDE:
        at = "full size" if (wh, ww) == (h, w) else f"{ww}x{wh}"
        _note(f"warning: {path} is {w}x{h} px and is predicted at {at}: this takes long and much memory; "
              f"--max-side {DEFAULT_MAX_SIDE} predicts with the longer side reduced to {DEFAULT_MAX_SIDE} px "
              f"(the outputs keep the input size)")
    return wh, ww


def _read_input(path: Path, mask: Optional[np.ndarray]) -> np.ndarray:
    """The image at ``path``; ValueError with a reason (no path) when it cannot be used."""
    from ..inference import load_image

    try:
        image, _ = load_image(str(path))
    except FileNotFoundError:
        raise ValueError("the file is gone") from None
    except ValueError as err:
        reason = str(err).replace(f"Cannot read {path} as an image: ", "")
        raise ValueError(f"cannot be read as an image ({reason})") from err
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"the --object-mask is {mask.shape[1]}x{mask.shape[0]} px but the image is "
                         f"{image.shape[1]}x{image.shape[0]} px; the mask must have the image's size")
    return image


def _write_skipped(out_dir: Path, skipped: list[dict], total: int) -> Optional[Path]:
    path = out_dir / "skipped.json"
    if skipped:
        report = {"num_inputs": total, "num_skipped": len(skipped), "skipped": skipped}
        path.write_text(json.dumps(report, indent=2) + "\n")
        return path
    if path.is_file():  # a report of an earlier run in this folder would mislead
        path.unlink()
    return None


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
    return write_outputs(pred, image, stem, out_dir, extra, alpha=args.alpha, outlines=not args.no_outlines,
                         legend=not args.no_legend, save_scores=args.save_scores)


def write_outputs(pred, image: np.ndarray, stem: str, out_dir: Path, extra: dict, *, alpha: float = 0.55,
                  outlines: bool = True, legend: bool = True, save_scores: bool = False) -> dict:
    """Write ``<stem>_overlay.png``, ``<stem>_labels.png`` and ``<stem>.json`` of one prediction into
    ``out_dir``; returns the JSON summary (``summary["files"]`` names the files). The demo and the web
    app write their outputs with this."""
    from PIL import Image

    from ..visualize import render_overlay

    out_dir = Path(out_dir)
    rendered = render_overlay(image, pred.labels, pred.class_names, alpha=alpha, outlines=outlines, legend=legend)
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
    summary["legend_placement"] = rendered.legend_placement  # inside / right / below (a larger overlay) / None
    summary["files"] = {"overlay": overlay_path.name, "labels": labels_path.name}
    summary["label_png"] = {"value": "index into vocabulary_classes", "background_or_none": none_value}
    if save_scores and pred.scores is not None:
        scores_path = out_dir / f"{stem}_scores.npz"
        np.savez_compressed(scores_path, scores=pred.scores.astype(np.float16), class_names=np.array(pred.class_names))
        summary["files"]["scores"] = scores_path.name
    summary["vocabulary_classes"] = list(pred.class_names)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(argv: Optional[Sequence[str]] = None) -> DemoResult:
    """The demo without the error-to-exit-status translation of :func:`main`.

    Returns the JSON summaries of the processed images (``.skipped`` lists the inputs that could
    not be used, also written to ``skipped.json``); raises :class:`NothingProcessedError` when
    every input was skipped.
    """
    from ..config import setup_cfg

    argv = list(sys.argv[1:] if argv is None else argv)
    args, opts = parse_with_overrides(build_parser(), argv)
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
    _check_device(cfg, args)
    model_task = _model_task(cfg)
    vocabulary = _resolve_vocabulary(args, model_task)
    images = find_images(args.input)
    mask = _read_object_mask(args.object_mask) if args.object_mask else None

    from tqdm import tqdm

    from ..inference import Predictor, build_model_with_weights

    model = build_model_with_weights(cfg)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(cfg, model=model, vocabulary=vocabulary)
    task: dict = {}
    if model_task == "part":
        if args.object is not None:
            predictor.object_index(args.object)  # validates against the final vocabulary
        task = {"object": args.object, "background": False if args.no_background else None}
    if mask is not None:
        task["object_mask"] = mask
    extra = {"config": str(config_file), "weights": str(cfg.MODEL.WEIGHTS)}
    items = list(zip(images, _unique_stems(images)))
    result = DemoResult()
    with tqdm(total=len(images), unit="img", desc=PROG, disable=args.quiet) as bar:
        for start in range(0, len(items), args.batch_size):
            loaded = []
            for path, stem in items[start : start + args.batch_size]:
                try:
                    image = _read_input(path, mask)
                except ValueError as err:  # skip this input, go on with the others
                    _note(f"warning: skipping {path}: {err}")
                    result.skipped.append({"file": str(path), "reason": str(err)})
                    bar.update(1)
                    continue
                loaded.append((path, stem, image, _size_notes(path, image.shape, args.max_side)))
            if not loaded:
                continue
            preds = predictor.predict_iter(
                [image for _, _, image, _ in loaded],
                batch_size=len(loaded),
                keep_scores=args.save_scores,
                max_side=args.max_side or None,
                **task,
            )
            for (path, stem, image, size), pred in zip(loaded, preds):
                pred.source = str(path)
                per_image = dict(extra, predicted_at={"height": size[0], "width": size[1]})
                result.append(_write_outputs(pred, image, stem, out_dir, args, per_image))
                bar.update(1)
    result.skipped_report = _write_skipped(out_dir, result.skipped, len(images))
    if not result:
        raise NothingProcessedError(
            f"none of the {len(images)} input image(s) could be processed (reasons above and in {result.skipped_report})"
        )
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: 0 on success (unreadable inputs skipped), 1 if no image could be processed,
    2 on a usage/input error; one message line on stderr (the common error path of every command line)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tune_allocator()
    return run_cli(_main, argv, PROG)


def _main(argv: list) -> int:
    try:
        summaries = run(argv)
    except NothingProcessedError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(f"{PROG}: wrote {3 * len(summaries)} files for {len(summaries)} image(s)")
    if summaries.skipped:
        names = ", ".join(s["file"] for s in summaries.skipped[:5]) + (", ..." if len(summaries.skipped) > 5 else "")
        print(f"{PROG}: skipped {len(summaries.skipped)} of {len(summaries) + len(summaries.skipped)} image(s), "
              f"listed with the reasons in {summaries.skipped_report}: {names}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
