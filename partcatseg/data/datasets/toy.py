"""A small synthetic part-segmentation dataset in exactly the Pascal-Part-116 on-disk layout.

Why: the real benchmarks are gigabytes and need manual downloads; tests, the demo and CI need a dataset
a tiny model can learn in minutes on a CPU, which exercises every code path of the real ones: base and
novel objects (novel objects never appear in the training split), objects without parts (their pixels are
object-labelled but part-ignored, like Pascal's boat/chair/sofa/table), shared part names across objects
("window" of a house and of a car), 8-bit PNGs with 255 = ignore, and the label-count jsons.

Layout written under ``out_dir`` (default ``$DETECTRON2_DATASETS/ToyPart``)::

    images/{train,val}/{split}_000000.jpg
    annotations_detectron2_part/{train,val}/{split}_000000.png   part class id (toy_part vocabulary), 255 ignore
    annotations_detectron2_obj/{train,val}/{split}_000000.png    object id, 255 background
    annotations_detectron2_part/{train,val}_obj_label_count.json {png name: [object ids]}
    toy_meta.json                                                generator settings

The vocabulary lives in ``partcatseg/vocab/data/toy_part.json`` (``get_part_dataset("toy_part")``); this
module only knows how to draw each "<object>'s <part>" name. Output is a pure function of the arguments:
the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from partcatseg.vocab import get_part_dataset

__all__ = ["TOY_VOCAB_KEY", "TOY_FOLDER", "TOY_LAYOUT", "toy_command", "make_toy_dataset", "render_toy_image"]

TOY_VOCAB_KEY = "toy_part"
TOY_FOLDER = "ToyPart"
TOY_LAYOUT = """\
ToyPart/
  images/{train,val}/*.jpg
  annotations_detectron2_part/{train,val}/*.png
  annotations_detectron2_obj/{train,val}/*.png
  annotations_detectron2_part/{train,val}_obj_label_count.json"""
GENERATOR_VERSION = 1
_SPLIT_IDS = {"train": 0, "val": 1}


def toy_command(dataset_dir: str) -> str:
    return f"python tools/make_toy_dataset.py --out {dataset_dir}"


# ---------------------------------------------------------------------------------------------- drawing
@dataclass
class _Canvas:
    image: np.ndarray  # float32 HxWx3, 0..255
    part: np.ndarray  # uint8 HxW
    obj: np.ndarray  # uint8 HxW
    yy: np.ndarray
    xx: np.ndarray


def _rect(c: _Canvas, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (c.xx >= x0) & (c.xx < x1) & (c.yy >= y0) & (c.yy < y1)


def _ellipse(c: _Canvas, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((c.xx - cx) / max(rx, 0.5)) ** 2 + ((c.yy - cy) / max(ry, 0.5)) ** 2 <= 1.0


def _convex(c: _Canvas, pts: list[tuple[float, float]]) -> np.ndarray:
    """Inside of a convex polygon (either orientation)."""
    signs = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        signs.append((x1 - x0) * (c.yy - y0) - (y1 - y0) * (c.xx - x0))
    pos = np.logical_and.reduce([s >= 0 for s in signs])
    neg = np.logical_and.reduce([s <= 0 for s in signs])
    return pos | neg


# Texture of each drawable: base colour + pattern. Parts of one object differ in colour *and* pattern.
_STYLE: dict[str, tuple[tuple[int, int, int], str]] = {
    "robot's head": ((175, 178, 195), "dots"),
    "robot's torso": ((115, 130, 155), "hstripes"),
    "robot's arm": ((85, 85, 100), "flat"),
    "robot's leg": ((55, 55, 70), "vstripes"),
    "house's roof": ((175, 45, 40), "dstripes"),
    "house's wall": ((225, 205, 160), "bricks"),
    "house's door": ((105, 65, 30), "flat"),
    "house's window": ((150, 205, 245), "flat"),
    "tree's crown": ((40, 145, 55), "noise"),
    "tree's trunk": ((100, 62, 30), "vstripes"),
    "ball": ((235, 205, 40), "hstripes"),
    "car's body": ((40, 85, 205), "flat"),
    "car's wheel": ((25, 25, 25), "noise"),
    "car's window": ((160, 212, 245), "flat"),
    "fish's body": ((245, 145, 40), "dots"),
    "fish's tail": ((215, 95, 30), "hstripes"),
    "fish's fin": ((250, 190, 90), "flat"),
    "kite": ((220, 50, 150), "checker"),
}


def _texture(c: _Canvas, rng: np.random.Generator, colour: tuple[int, int, int], pattern: str) -> np.ndarray:
    jitter = rng.uniform(-12, 12, size=3)
    base = np.asarray(colour, dtype=np.float32) + jitter.astype(np.float32)
    shade = np.zeros(c.xx.shape, dtype=np.float32)
    phase = float(rng.uniform(0, 6))
    if pattern == "hstripes":
        shade = np.where(((c.yy + phase) // 3) % 2 == 0, 18.0, -18.0)
    elif pattern == "vstripes":
        shade = np.where(((c.xx + phase) // 3) % 2 == 0, 16.0, -16.0)
    elif pattern == "dstripes":
        shade = np.where(((c.xx + c.yy + phase) // 4) % 2 == 0, 20.0, -20.0)
    elif pattern == "checker":
        shade = np.where(((c.xx // 4) + (c.yy // 4)) % 2 == 0, 25.0, -25.0)
    elif pattern == "bricks":
        row = (c.yy + phase) // 4
        mortar = ((c.yy + phase) % 4 < 1) | (((c.xx + 4 * (row % 2)) % 8) < 1)
        shade = np.where(mortar, -45.0, 0.0)
    elif pattern == "dots":
        shade = np.where(((c.xx % 5) - 2) ** 2 + ((c.yy % 5) - 2) ** 2 <= 1, -35.0, 0.0)
    noise = rng.normal(0, 6 if pattern != "noise" else 14, size=c.xx.shape).astype(np.float32)
    return base[None, None, :] + (shade + noise)[:, :, None]


def _paint(c: _Canvas, rng: np.random.Generator, mask: np.ndarray, style: str, part_id: int, obj_id: int) -> None:
    if not mask.any():
        return
    colour, pattern = _STYLE[style]
    tex = _texture(c, rng, colour, pattern)
    c.image[mask] = tex[mask]
    c.part[mask] = part_id
    c.obj[mask] = obj_id


# Each object: list of (style / class name, mask function of (canvas, box)). ``None`` part = part-less.
_Box = tuple[float, float, float, float]  # x0, y0, w, h


def _robot(c: _Canvas, b: _Box) -> list[tuple[str, np.ndarray]]:
    x, y, w, h = b
    cx = x + w / 2
    head = _rect(c, cx - 0.18 * w, y, cx + 0.18 * w, y + 0.26 * h)
    torso = _rect(c, cx - 0.28 * w, y + 0.28 * h, cx + 0.28 * w, y + 0.64 * h)
    arms = _rect(c, cx - 0.48 * w, y + 0.30 * h, cx - 0.31 * w, y + 0.60 * h) | _rect(
        c, cx + 0.31 * w, y + 0.30 * h, cx + 0.48 * w, y + 0.60 * h)
    legs = _rect(c, cx - 0.24 * w, y + 0.66 * h, cx - 0.06 * w, y + h) | _rect(
        c, cx + 0.06 * w, y + 0.66 * h, cx + 0.24 * w, y + h)
    return [("robot's head", head), ("robot's torso", torso), ("robot's arm", arms), ("robot's leg", legs)]


def _house(c: _Canvas, b: _Box) -> list[tuple[str, np.ndarray]]:
    x, y, w, h = b
    wall = _rect(c, x + 0.08 * w, y + 0.42 * h, x + 0.92 * w, y + h)
    roof = _convex(c, [(x, y + 0.44 * h), (x + w / 2, y), (x + w, y + 0.44 * h)])
    door = _rect(c, x + 0.42 * w, y + 0.66 * h, x + 0.60 * w, y + h)
    window = _rect(c, x + 0.16 * w, y + 0.54 * h, x + 0.34 * w, y + 0.72 * h) | _rect(
        c, x + 0.68 * w, y + 0.54 * h, x + 0.84 * w, y + 0.72 * h)
    return [("house's wall", wall), ("house's roof", roof), ("house's door", door), ("house's window", window)]


def _tree(c: _Canvas, b: _Box) -> list[tuple[str, np.ndarray]]:
    x, y, w, h = b
    trunk = _rect(c, x + 0.40 * w, y + 0.50 * h, x + 0.60 * w, y + h)
    crown = _ellipse(c, x + w / 2, y + 0.33 * h, 0.48 * w, 0.33 * h)
    return [("tree's trunk", trunk), ("tree's crown", crown)]


def _ball(c: _Canvas, b: _Box) -> list[tuple[str, np.ndarray]]:
    x, y, w, h = b
    r = 0.45 * min(w, h)
    return [("ball", _ellipse(c, x + w / 2, y + h - r, r, r))]


def _car(c: _Canvas, b: _Box) -> list[tuple[str, np.ndarray]]:
    x, y, w, h = b
    body = _rect(c, x, y + 0.45 * h, x + w, y + 0.82 * h) | _rect(c, x + 0.2 * w, y + 0.15 * h, x + 0.75 * w, y + 0.47 * h)
    window = _rect(c, x + 0.27 * w, y + 0.22 * h, x + 0.68 * w, y + 0.42 * h)
    r = 0.16 * h
    wheels = _ellipse(c, x + 0.24 * w, y + h - r, r, r) | _ellipse(c, x + 0.76 * w, y + h - r, r, r)
    return [("car's body", body), ("car's window", window), ("car's wheel", wheels)]


def _fish(c: _Canvas, b: _Box) -> list[tuple[str, np.ndarray]]:
    x, y, w, h = b
    cy = y + 0.55 * h
    body = _ellipse(c, x + 0.58 * w, cy, 0.36 * w, 0.26 * h)
    tail = _convex(c, [(x, cy - 0.28 * h), (x + 0.26 * w, cy), (x, cy + 0.28 * h)])
    fin = _convex(c, [(x + 0.45 * w, cy - 0.2 * h), (x + 0.58 * w, y + 0.08 * h), (x + 0.70 * w, cy - 0.2 * h)])
    return [("fish's tail", tail), ("fish's fin", fin), ("fish's body", body)]


def _kite(c: _Canvas, b: _Box) -> list[tuple[str, np.ndarray]]:
    x, y, w, h = b
    cx = x + w / 2
    return [("kite", _convex(c, [(cx, y), (x + 0.9 * w, y + 0.4 * h), (cx, y + h), (x + 0.1 * w, y + 0.4 * h)]))]


_OBJECTS: dict[str, Callable[[_Canvas, _Box], list[tuple[str, np.ndarray]]]] = {
    "robot": _robot, "house": _house, "tree": _tree, "ball": _ball, "car": _car, "fish": _fish, "kite": _kite,
}
# (min, max) box height as a fraction of the image height, and width / height aspect.
_SHAPE = {"robot": (0.55, 0.8, 0.75), "house": (0.5, 0.75, 1.0), "tree": (0.55, 0.85, 0.7), "ball": (0.3, 0.45, 1.0),
          "car": (0.35, 0.5, 1.7), "fish": (0.35, 0.5, 1.5), "kite": (0.4, 0.6, 0.7)}


def _background(c: _Canvas, rng: np.random.Generator) -> None:
    h, w = c.xx.shape
    horizon = int(rng.integers(int(0.35 * h), int(0.6 * h)))
    sky = np.asarray([rng.uniform(150, 200), rng.uniform(170, 215), rng.uniform(200, 240)], dtype=np.float32)
    ground = np.asarray([rng.uniform(110, 160), rng.uniform(100, 140), rng.uniform(70, 110)], dtype=np.float32)
    coarse = rng.normal(0, 10, size=(h // 8 + 2, w // 8 + 2)).astype(np.float32)
    low = np.kron(coarse, np.ones((8, 8), dtype=np.float32))[:h, :w]  # blocky low-frequency texture
    fine = rng.normal(0, 5, size=(h, w)).astype(np.float32)
    gradient = (c.yy / h * 25).astype(np.float32)
    is_sky = c.yy < horizon
    c.image[:] = np.where(is_sky[:, :, None], sky, ground)
    c.image += (low + fine + np.where(is_sky, gradient, -gradient / 2))[:, :, None]


def render_toy_image(
    rng: np.random.Generator, height: int, width: int, objects: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``objects`` (names of the toy vocabulary) side by side; returns (RGB uint8, part ids, object ids)."""
    ds = get_part_dataset(TOY_VOCAB_KEY)
    class_id = {n: i for i, n in enumerate(ds.class_names)}
    obj_id = {n: i for i, n in enumerate(ds.obj_classes)}
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    c = _Canvas(np.zeros((height, width, 3), np.float32), np.full((height, width), 255, np.uint8),
                np.full((height, width), 255, np.uint8), yy, xx)
    _background(c, rng)
    slot_w = width / len(objects)
    for k, name in enumerate(objects):
        lo, hi, aspect = _SHAPE[name]
        bh = float(rng.uniform(lo, hi)) * height
        bw = min(bh * aspect, 0.92 * slot_w)
        bh = bw / aspect
        x0 = k * slot_w + float(rng.uniform(0.02 * slot_w, slot_w - bw - 0.02 * slot_w))
        y0 = float(rng.uniform(0.04 * height, height - bh - 0.02 * height))
        for style, mask in _OBJECTS[name](c, (x0, y0, bw, bh)):
            part = class_id.get(style, 255)  # part-less objects: object label only
            _paint(c, rng, mask, style, part, obj_id[name])
    image = np.clip(np.rint(c.image), 0, 255).astype(np.uint8)
    return image, c.part, c.obj


def _choose_objects(rng: np.random.Generator, split: str, base: list[str], novel: list[str]) -> list[str]:
    n = 1 if rng.uniform() < 0.5 else 2
    out = []
    for _ in range(n):
        pool = novel if (split == "val" and rng.uniform() < 0.5) else base
        out.append(pool[int(rng.integers(len(pool)))])
    return out


_MANAGED = ("images", "annotations_detectron2_part", "annotations_detectron2_obj", "toy_meta.json")


def make_toy_dataset(
    out_dir: str,
    *,
    seed: int = 0,
    num_train: int = 40,
    num_val: int = 16,
    size: int = 96,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, object]:
    """Write the toy dataset to ``out_dir``; returns a summary (image and instance counts per split).

    ``size`` is the image height; the width is 4/3 of it (96 -> 96x128). Each image is drawn from its own
    RNG stream ``(seed, split, index)``, so changing ``num_val`` does not change the training images.
    """
    from tqdm import tqdm

    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")
    existing = [m for m in _MANAGED if os.path.exists(os.path.join(out_dir, m))]
    if existing:
        if not overwrite:
            raise FileExistsError(f"'{out_dir}' already contains {existing}; pass overwrite=True (--overwrite) to replace them")
        for m in existing:
            p = os.path.join(out_dir, m)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

    ds = get_part_dataset(TOY_VOCAB_KEY)
    missing = sorted({c for c in ds.class_names if c not in _STYLE} | {o for o in ds.obj_classes if o not in _OBJECTS})
    if missing:
        raise ValueError(f"toy_part vocabulary names without a drawing rule: {missing}")
    novel = list(ds.novel_obj_classes)
    base = [o for o in ds.obj_classes if o not in novel]
    height, width = int(size), int(round(size * 4 / 3))
    summary: dict[str, object] = {"out_dir": out_dir, "height": height, "width": width}
    for split, count in (("train", num_train), ("val", num_val)):
        dirs = {k: os.path.join(out_dir, k, split) for k in ("images", "annotations_detectron2_part", "annotations_detectron2_obj")}
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        label_count: dict[str, list[int]] = {}
        instances: dict[str, int] = {o: 0 for o in ds.obj_classes}
        for i in tqdm(range(count), disable=not progress, desc=f"toy {split}"):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            objects = _choose_objects(rng, split, base, novel)
            image, part, obj = render_toy_image(rng, height, width, objects)
            stem = f"{split}_{i:06d}"
            Image.fromarray(image).save(os.path.join(dirs["images"], stem + ".jpg"), quality=95)
            Image.fromarray(part).save(os.path.join(dirs["annotations_detectron2_part"], stem + ".png"))
            Image.fromarray(obj).save(os.path.join(dirs["annotations_detectron2_obj"], stem + ".png"))
            label_count[stem + ".png"] = [int(v) for v in np.unique(obj) if v != 255]
            for o in objects:
                instances[o] += 1
        with open(os.path.join(out_dir, "annotations_detectron2_part", f"{split}_obj_label_count.json"), "w") as f:
            json.dump(label_count, f)
        summary[split] = {"images": count, "instances": instances}
    meta = {"generator": f"partcatseg toy v{GENERATOR_VERSION}", "seed": seed, "num_train": num_train,
            "num_val": num_val, "height": height, "width": width, "vocabulary": TOY_VOCAB_KEY}
    with open(os.path.join(out_dir, "toy_meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return summary
