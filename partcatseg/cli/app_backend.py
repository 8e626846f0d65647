"""What the web app (``partcatseg-app``) does, without the web page: models, requests, pictures.

* :func:`discover_models` lists what can be served: the ``--model`` arguments (any
  :func:`~partcatseg.inference.hub.from_pretrained` form), released weights present in the weights
  directory, pretrained folders found in the weights directory (or ``--models-dir``), and the toy model
  of ``make demo``;
* :func:`ensure_toy_model` trains the toy model (``configs/toy/partcatseg_toy.yaml``) when it is
  missing, printing its progress;
* :class:`AppBackend` loads each model once (Predictor), segments a request with a vocabulary in the
  demo's syntax or a dataset's, writes the demo's files (overlay, label PNG, JSON) and renders the
  overlay again when parts are switched on or off. Requests are serialised by a lock.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = [
    "ModelChoice",
    "AppBackend",
    "SegmentResult",
    "discover_models",
    "ensure_toy_model",
    "example_images",
    "hierarchy",
    "hierarchy_html",
    "CUSTOM",
    "MODEL_OWN",
    "TOY_CONFIG",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_CONFIG = REPO_ROOT / "configs" / "toy" / "partcatseg_toy.yaml"
DEFAULT_TOY_OUTPUT = "output/toy_demo"
CUSTOM = "custom (type it below)"
MODEL_OWN = "the model's test vocabulary"
PART_VOCABULARIES = ("pascal_part_116", "ade_part_234", "partimagenet", "partimagenet_ood", "toy_part")
TOY_BANNER = (
    "**Toy model.** This is the PartCATSeg toy model of `make demo` (served when no released weights are "
    "found): a reduced-width network trained for 300 CPU iterations on synthetic shapes (robots, houses, "
    "trees). Its output on photographs is not meaningful. For real results: `python tools/download_weights.py "
    "partcatseg_voc` and restart, or `--model <folder or hub repo>`."
)


# ------------------------------------------------------------------------------------------ models
@dataclass
class ModelChoice:
    """One entry of the model list: ``spec`` is what :func:`~partcatseg.inference.hub.load_pretrained` takes."""

    label: str
    spec: str
    kind: str  # "given" | "released" | "folder" | "toy"
    toy: bool = False
    config_file: Optional[str] = None


def _toy_checkpoint(toy_output: os.PathLike | str) -> Path:
    return Path(toy_output) / "model_final.pth"


def discover_models(
    given: Sequence[str] = (),
    *,
    models_dirs: Optional[Sequence[os.PathLike | str]] = None,
    toy_output: os.PathLike | str = DEFAULT_TOY_OUTPUT,
    include_toy: bool = True,
) -> list[ModelChoice]:
    """The models the app offers, best first: ``given`` (as named), released weights on disk,
    pretrained folders in ``models_dirs`` (default: the weights directory), then the toy model (only
    when its checkpoint exists; :func:`ensure_toy_model` makes it)."""
    from ..inference.hub import is_pretrained_folder
    from ..weights import WEIGHTS, weights_dir

    choices: list[ModelChoice] = []
    seen: set[str] = set()

    def add(choice: ModelChoice) -> None:
        key = os.path.realpath(choice.spec) if os.path.exists(choice.spec) else choice.spec
        if key not in seen:
            seen.add(key)
            choices.append(choice)

    for spec in given:
        toy = os.path.realpath(spec) == os.path.realpath(_toy_checkpoint(toy_output))
        add(ModelChoice(label=spec, spec=spec, kind="given", toy=toy))
    directory = weights_dir()
    for spec in WEIGHTS.values():
        if spec.config and spec.available and (directory / spec.filename).is_file():
            add(ModelChoice(label=f"{spec.name} ({spec.description})", spec=spec.name, kind="released"))
    for folder_root in ([directory] if models_dirs is None else models_dirs):
        root = Path(folder_root)
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if is_pretrained_folder(sub):
                add(ModelChoice(label=f"{sub.name} (folder {sub})", spec=str(sub), kind="folder"))
    toy_ckpt = _toy_checkpoint(toy_output)
    if include_toy and toy_ckpt.is_file():
        add(ModelChoice(label="toy model (make demo)", spec=str(toy_ckpt), kind="toy", toy=True))
    return choices


_ITER = re.compile(r"\biter: (\d+)\b")


def ensure_toy_model(
    toy_output: os.PathLike | str = DEFAULT_TOY_OUTPUT,
    *,
    dataset_root: Optional[os.PathLike | str] = None,
    opts: Sequence[str] = (),
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> Path:
    """``<toy_output>/model_final.pth``; trained first (as ``make demo`` does) when it is missing.

    The toy dataset is generated under ``dataset_root`` (default ``$DETECTRON2_DATASETS`` or
    ``datasets``) if needed; training runs ``train_net.py`` of the checkout in a subprocess, and its
    progress is reported through ``log`` (one line per logged iteration). ``opts``: config overrides
    (e.g. ``SOLVER.MAX_ITER 20`` for a quick model).
    """
    checkpoint = _toy_checkpoint(toy_output)
    if checkpoint.is_file():
        return checkpoint
    from ..config import setup_cfg
    from ..data.datasets import make_toy_dataset
    from .errors import UsageError

    train_net = REPO_ROOT / "train_net.py"
    if not train_net.is_file() or not TOY_CONFIG.is_file():
        raise UsageError(f"no toy model at {checkpoint}, and training it needs a source checkout (train_net.py and "
                         f"{TOY_CONFIG.name}); pass --model with a weights name, folder or hub repository")
    root = Path(dataset_root or os.environ.get("DETECTRON2_DATASETS") or "datasets")
    if not (root / "ToyPart" / "toy_meta.json").is_file():
        log(f"partcatseg-app: generating the toy dataset in {root / 'ToyPart'} (once)")
        make_toy_dataset(str(root / "ToyPart"), num_train=120, num_val=24, progress=False)
    max_iter = setup_cfg(str(TOY_CONFIG), list(opts)).SOLVER.MAX_ITER
    log(f"partcatseg-app: no toy model at {checkpoint}; training it now ({max_iter} iterations on the CPU, "
        f"as `make demo`; a few minutes)")
    cmd = [sys.executable, str(train_net), "--config-file", str(TOY_CONFIG), "OUTPUT_DIR", str(toy_output),
           "MODEL.DEVICE", "cpu", *opts]
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONUNBUFFERED="1")
    start = time.time()
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-30:]
            match = _ITER.search(line)
            if match:
                done = int(match.group(1)) + 1
                log(f"partcatseg-app: training the toy model: iteration {done}/{max_iter} "
                    f"({time.time() - start:.0f} s)")
        status = proc.wait()
    if status != 0 or not checkpoint.is_file():
        raise RuntimeError(f"training the toy model failed (exit status {status}); the end of its output:\n"
                           + "\n".join(tail))
    log(f"partcatseg-app: toy model trained in {time.time() - start:.0f} s: {checkpoint}")
    return checkpoint


def example_images(directory: os.PathLike | str) -> list[Path]:
    """scikit-image's photographs (cat, coffee, motorcycle) copied into ``directory`` for the page's examples."""
    try:
        import skimage.data
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        return []
    src = Path(skimage.data.__file__).parent
    out = []
    Path(directory).mkdir(parents=True, exist_ok=True)
    for name in ("chelsea.png", "coffee.png", "motorcycle_left.png"):
        if (src / name).is_file():
            target = Path(directory) / name
            shutil.copyfile(src / name, target)
            out.append(target)
    return out


# ------------------------------------------------------------------------------------------ results
def hierarchy(summary: dict, has_parts: bool) -> list[dict]:
    """The classes present grouped by object: ``[{"object", "pixels", "area_fraction", "parts": [...]}]``
    (largest first); a semantic vocabulary gives one group per class without parts."""
    from ..vocab import split_part_name

    groups: "OrderedDict[str, dict]" = OrderedDict()
    for entry in summary["classes"]:
        if has_parts:
            obj, part = split_part_name(entry["name"])
        else:
            obj, part = entry["name"], None
        group = groups.setdefault(obj, {"object": obj, "pixels": 0, "area_fraction": 0.0, "parts": []})
        group["pixels"] += entry["pixels"]
        group["area_fraction"] += entry["area_fraction"]
        if part is not None:
            group["parts"].append({"part": part, "name": entry["name"], "pixels": entry["pixels"],
                                   "area_fraction": entry["area_fraction"], "mean_score": entry["mean_score"]})
    out = sorted(groups.values(), key=lambda g: -g["pixels"])
    for g in out:
        g["area_fraction"] = round(g["area_fraction"], 6)
    return out


def hierarchy_html(groups: list[dict], class_names: Sequence[str], total_pixels: int, unlabeled: int) -> str:
    """The object -> part table of a result (colour swatches as in the overlay)."""
    from ..visualize import palette

    colors = palette(class_names)
    index = {n: i for i, n in enumerate(class_names)}

    def swatch(name: str) -> str:
        r, g, b = (int(c) for c in colors[index[name]])
        return (f'<span style="display:inline-block;width:0.9em;height:0.9em;background:rgb({r},{g},{b});'
                f'border:1px solid #444;margin-right:0.4em;vertical-align:middle"></span>')

    rows = []
    for g in groups:
        rows.append(f'<tr style="font-weight:bold"><td>{"" if g["parts"] else swatch(g["object"])}'
                    f'{html.escape(g["object"])}</td><td style="text-align:right">{100 * g["area_fraction"]:.1f} %</td>'
                    f'<td style="text-align:right">{g["pixels"]:,}</td></tr>')
        for p in g["parts"]:
            rows.append(f'<tr><td style="padding-left:1.6em">{swatch(p["name"])}{html.escape(p["part"])}</td>'
                        f'<td style="text-align:right">{100 * p["area_fraction"]:.1f} %</td>'
                        f'<td style="text-align:right">{p["pixels"]:,}</td></tr>')
    if unlabeled:
        rows.append(f'<tr style="color:#777"><td>background / none</td><td style="text-align:right">'
                    f'{100 * unlabeled / max(total_pixels, 1):.1f} %</td><td style="text-align:right">{unlabeled:,}</td></tr>')
    if not groups:
        rows.insert(0, '<tr><td colspan="3">no class was predicted anywhere (all background)</td></tr>')
    return ('<table id="partcatseg-hierarchy" style="width:100%;border-collapse:collapse">'
            '<thead><tr><th style="text-align:left">object / part</th><th style="text-align:right">area</th>'
            '<th style="text-align:right">pixels</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


@dataclass
class SegmentResult:
    """One request's outputs (the page shows them; ``summary`` is the JSON file's content)."""

    image: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    overlay: np.ndarray
    summary: dict
    groups: list[dict]
    files: list[str]
    timings: dict
    present: list[str] = field(default_factory=list)

    def latency_text(self) -> str:
        t = self.timings
        text = "in memory" if t["text_cached"] else "first use of this vocabulary: encoded or read from the disk cache"
        return (f"**{t['total']:.2f} s** for this request: model {t['model']:.2f} s at {t['width']}x{t['height']} px · "
                f"text features {t['text']:.2f} s ({text}) · pictures and files {t['files']:.2f} s — "
                f"{t['device']}")


# ------------------------------------------------------------------------------------------ backend
class AppBackend:
    """Loads models once, runs requests one at a time, keeps every request's files in ``output_dir``."""

    def __init__(self, choices: Sequence[ModelChoice], *, output_dir: os.PathLike | str, device: Optional[str] = None,
                 opts: Sequence[str] = (), max_side: Optional[int] = 1024, max_loaded: int = 2,
                 alpha: float = 0.55) -> None:
        if not choices:
            raise ValueError("no model to serve")
        self.choices: "OrderedDict[str, ModelChoice]" = OrderedDict((c.label, c) for c in choices)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.opts = list(opts)
        self.max_side = max_side or None
        self.max_loaded = max(1, int(max_loaded))
        self.alpha = alpha
        self._loaded: "OrderedDict[str, Any]" = OrderedDict()
        self._lock = threading.RLock()
        self._count = 0
        self._prepared: set[tuple] = set()  # (model, class names) whose text features are in memory
        self.latencies: list[dict] = []

    @property
    def default(self) -> str:
        return next(iter(self.choices))

    def choice(self, label: Optional[str]) -> ModelChoice:
        if not label:
            return self.choices[self.default]
        if label not in self.choices:
            raise KeyError(f"unknown model {label!r}; choose one of {list(self.choices)}")
        return self.choices[label]

    def predictor(self, label: Optional[str] = None):
        """The Predictor of a model, loaded on first use (at most ``max_loaded`` are kept in memory)."""
        from ..inference import Predictor

        choice = self.choice(label)
        with self._lock:
            if choice.label in self._loaded:
                self._loaded.move_to_end(choice.label)
                return self._loaded[choice.label]
            while len(self._loaded) >= self.max_loaded:
                old, _ = self._loaded.popitem(last=False)
                logger.info("unloading %s", old)
            start = time.perf_counter()
            predictor = Predictor.from_pretrained(choice.spec, device=self.device, opts=self.opts,
                                                  config_file=choice.config_file)
            logger.info("loaded %s in %.1f s", choice.label, time.perf_counter() - start)
            predictor.load_seconds = time.perf_counter() - start
            predictor.default_vocabulary = predictor.vocabulary
            self._loaded[choice.label] = predictor
            return predictor

    def warm_up(self, label: Optional[str] = None) -> None:
        """Load a model, prepare its test vocabulary's text features and draw once (fonts load on first use),
        so that the first request pays for none of it."""
        from ..visualize import render_overlay

        p = self.predictor(label)
        with self._lock:
            p.model.prepare_vocabulary()
            self._prepared.add((label or self.default, tuple(p.vocabulary.classes)))
        labels = np.zeros((32, 32), dtype=np.int64)
        render_overlay(np.zeros((32, 32, 3), np.uint8), labels, list(p.vocabulary.classes[:1]))

    def describe(self, label: Optional[str] = None) -> str:
        """One Markdown line about a (loaded) model."""
        choice = self.choice(label)
        p = self.predictor(label)
        facts = p.model.describe()
        vocab = p.model.vocabulary
        extent = f"{len(vocab.classes)} classes" + (f" of {len(vocab.objects)} objects" if vocab.has_parts else "")
        return (f"`{facts.get('meta_architecture')}` ({p.task} segmentation) from {p.source.description if p.source else choice.spec}"
                f" on `{p.model.device}`; its test vocabulary `{vocab.name}` has {extent}.")

    def vocabulary_sources(self, label: Optional[str] = None) -> list[str]:
        from ..vocab import SEMANTIC_VOCABULARIES

        task = self.predictor(label).task
        keys = list(PART_VOCABULARIES) if task == "part" else list(SEMANTIC_VOCABULARIES)
        return [CUSTOM, MODEL_OWN, *keys]

    def resolve(self, label: Optional[str], source: Optional[str], text: Optional[str]):
        """The Vocabulary a request asks for (``source``: CUSTOM, MODEL_OWN or a dataset key)."""
        from ..vocab import VocabularyError, resolve_vocabulary

        p = self.predictor(label)
        if not source or source == MODEL_OWN:
            return p.default_vocabulary
        if source == CUSTOM:
            if not text or not text.strip():
                example = "cat: head, ear, tail; dog: head, leg" if p.task == "part" else "cat, dog|puppy, grass"
                raise VocabularyError(f"type a vocabulary (e.g. {example}) or choose a dataset's")
            if p.task == "part":
                return resolve_vocabulary(objects=text, task="part")
            return resolve_vocabulary(classes=text, task="semantic")
        return resolve_vocabulary(source, task=p.task)

    def objects(self, label: Optional[str], source: Optional[str], text: Optional[str]) -> list[str]:
        """The objects Oracle-Obj can pick for this vocabulary (those with part classes); [] if none/invalid."""
        from ..vocab import oracle_class_mask

        try:
            vocab = self.resolve(label, source, text)
        except Exception:  # noqa: BLE001 - a half-typed vocabulary: no choices yet
            return []
        if not vocab.has_parts:
            return []
        return [o for o in vocab.objects if any(oracle_class_mask(vocab.classes, o))]

    def segment(self, image: Any, label: Optional[str] = None, source: Optional[str] = CUSTOM, text: str = "",
                mode: str = "Pred-All", object_name: Optional[str] = None, no_background: bool = False) -> SegmentResult:
        """Run one request and write its files (the demo's: overlay, label PNG, JSON) under ``output_dir``."""
        from ..inference import load_image
        from ..vocab import VocabularyError
        from .demo import write_outputs

        start = time.perf_counter()
        if image is None or (isinstance(image, str) and not image):
            raise VocabularyError("upload an image or pick an example first")
        array, path = load_image(image)
        with self._lock:
            p = self.predictor(label)
            vocab = self.resolve(label, source, text)
            p.set_vocabulary(vocab)
            kwargs: dict = {}
            if p.task == "part":
                if mode == "Oracle-Obj":
                    if not object_name:
                        raise VocabularyError("Oracle-Obj: pick the object (objects: " + ", ".join(vocab.objects) + ")")
                    kwargs["object"] = object_name
                if no_background:
                    kwargs["background"] = False
            key = (label or self.default, tuple(vocab.classes))
            cached_before = key in self._prepared
            t0 = time.perf_counter()
            p.model.prepare_vocabulary()  # the model caches them (memory, and disk for the CLIP models)
            t1 = time.perf_counter()
            cached_before = cached_before or t1 - t0 < 0.01  # the model held them already
            self._prepared.add(key)
            pred = p(array, keep_scores=False, max_side=self.max_side, **kwargs)
            t2 = time.perf_counter()
            self._count += 1
            count = self._count
        from ..inference.predictor import working_size

        h, w = working_size(array.shape[0], array.shape[1], self.max_side)
        stem = Path(path).stem if path else "image"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "image"
        req_dir = self.output_dir / f"{count:04d}_{stem}"
        req_dir.mkdir(parents=True, exist_ok=True)
        pred.source = os.path.basename(path) if path else None
        choice = self.choice(label)
        extra = {"model": choice.spec, "model_kind": choice.kind, "mode": mode if p.task == "part" else "semantic",
                 "predicted_at": {"height": h, "width": w}}
        summary = write_outputs(pred, array, stem, req_dir, extra, alpha=self.alpha)
        overlay = np.array(_read_rgb(req_dir / summary["files"]["overlay"]))
        groups = hierarchy(summary, vocab.has_parts)
        t3 = time.perf_counter()
        timings = {"total": t3 - start, "text": t1 - t0, "text_cached": cached_before, "model": t2 - t1,
                   "files": t3 - t2, "height": h, "width": w, "device": str(p.model.device)}
        summary["latency_seconds"] = {k: round(v, 4) for k, v in timings.items() if isinstance(v, float)}
        (req_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.latencies.append(timings)
        files = [str(req_dir / summary["files"]["labels"]), str(req_dir / f"{stem}.json")]
        present = [c["name"] for c in summary["classes"]]
        return SegmentResult(array, pred.labels, list(pred.class_names), overlay, summary, groups, files, timings, present)

    def render(self, result: SegmentResult, shown: Optional[Sequence[str]]) -> np.ndarray:
        """The overlay with only the ``shown`` classes painted (all when None)."""
        from ..visualize import render_overlay

        labels = result.labels
        if shown is not None:
            keep = np.zeros(len(result.class_names) + 1, dtype=bool)
            index = {n: i for i, n in enumerate(result.class_names)}
            for name in shown:
                if name in index:
                    keep[index[name]] = True
            labels = np.where((labels >= 0) & keep[np.clip(labels, 0, None)], labels, -1)
        return render_overlay(result.image, labels, result.class_names, alpha=self.alpha).image


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))
