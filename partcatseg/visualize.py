"""Pictures of segmentations: coloured overlays, object outlines, legends and evaluation panels.

Used by the demo CLI (``partcatseg.cli.demo``) and by the evaluator's optional visual output
(``TEST.VISUALIZE``: GT | Pred-All | Oracle-Obj panels per record). Everything is plain numpy +
Pillow (+ OpenCV for dilation); no fonts need to be installed (Pillow's bundled default font).

Colours are a deterministic function of the class *name*, so "cat's head" has the same colour in
every image, run and vocabulary.
"""
from __future__ import annotations

import colorsys
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .vocab import SEP, split_part_name

__all__ = [
    "class_color",
    "object_of",
    "object_map",
    "object_outlines",
    "colorize",
    "draw_legend",
    "render_overlay",
    "Rendered",
    "add_title",
    "hstack_panels",
    "evaluation_panels",
    "record_panels",
    "save_record_panels",
]

OUTLINE_COLOR = (255, 255, 255)


def class_color(name: str) -> tuple[int, int, int]:
    """A saturated RGB colour derived from the class name's hash (stable across runs)."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    sat = 0.55 + 0.4 * digest[2] / 255.0
    val = 0.70 + 0.3 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def object_of(name: str) -> str:
    """The object of an "obj's part" class (the whole name for semantic classes)."""
    return split_part_name(name)[0] if SEP in name else name


def object_map(labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """(H, W) int32 object ids (-1 where ``labels`` < 0): classes grouped by :func:`object_of`."""
    objects: dict[str, int] = {}
    lut = np.array([objects.setdefault(object_of(n), len(objects)) for n in class_names] + [-1], dtype=np.int32)
    labels = np.asarray(labels)
    return lut[np.where(labels >= 0, labels, len(class_names))]


def _thickness(shape: tuple[int, ...]) -> int:
    return max(1, int(round(max(shape[:2]) / 400)))


def object_outlines(labels: np.ndarray, class_names: Sequence[str], thickness: Optional[int] = None) -> np.ndarray:
    """(H, W) bool: boundaries of the object regions (where the object id changes, incl. to background).

    Parts of one object share a region, so outlines show objects, not every part edge.
    """
    import cv2
    from skimage.segmentation import find_boundaries

    obj = object_map(labels, class_names)
    edge = find_boundaries(obj, connectivity=1, mode="thick")
    edge &= obj >= 0  # draw on the object's side only
    t = thickness if thickness is not None else _thickness(obj.shape)
    if t > 1:
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((t, t), np.uint8)).astype(bool)
    return edge


def _palette(class_names: Sequence[str]) -> np.ndarray:
    return np.array([class_color(n) for n in class_names] + [(0, 0, 0)], dtype=np.uint8).reshape(-1, 3)


def colorize(labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8 colour image of ``labels`` (black where < 0)."""
    labels = np.asarray(labels)
    return _palette(class_names)[np.where(labels >= 0, labels, len(class_names))]


# ------------------------------------------------------------------------------------------ text
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable bundled font
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _font_size_for(shape: tuple[int, ...]) -> int:
    return int(min(22, max(10, round(min(shape[:2]) / 26))))


def draw_legend(
    image: np.ndarray,
    entries: Sequence[tuple[str, tuple[int, int, int]]],
    *,
    font_size: Optional[int] = None,
    margin: int = 4,
) -> tuple[np.ndarray, list[str]]:
    """Draw a legend box (colour swatch + name per entry) in the top-left corner of ``image``.

    The legend stays inside the image (the output keeps the input's size): entries flow into
    columns and, if they still do not fit, the rest is summarised as "+N more". Returns the new
    image and the names actually listed.
    """
    from PIL import Image, ImageDraw

    if not entries:
        return image.copy(), []
    h, w = image.shape[:2]
    size = font_size or _font_size_for(image.shape)
    font = _font(size)
    base = Image.fromarray(image).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line_h = size + 4
    swatch = size
    rows_fit = max(1, (h - 2 * margin) // line_h)

    def width_of(names: Sequence[str]) -> int:
        return max(_text_size(draw, n, font)[0] for n in names) + swatch + 3 * margin

    # lay entries out column by column until the image width is used up
    columns: list[list[tuple[str, tuple[int, int, int]]]] = []
    x_total = margin
    shown = 0
    remaining = list(entries)
    while remaining:
        col = remaining[:rows_fit]
        col_w = width_of([n for n, _ in col])
        if x_total + col_w > w and columns:
            break
        columns.append(col)
        x_total += col_w
        shown += len(col)
        remaining = remaining[len(col) :]
    if remaining:  # replace the last entry shown with a "+N more" line
        last = columns[-1]
        dropped = last.pop()
        remaining.insert(0, dropped)
        shown -= 1
        last.append((f"+{len(remaining)} more", None))
    listed: list[str] = []
    x = margin
    box_h = max(len(c) for c in columns) * line_h + margin
    draw.rectangle([0, 0, min(w - 1, x_total), min(h - 1, box_h)], fill=(0, 0, 0, 150))
    for col in columns:
        col_w = width_of([n for n, _ in col])
        for row, (name, color) in enumerate(col):
            y = margin + row * line_h
            tx = x
            if color is not None:
                draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(color) + (255,), outline=(255, 255, 255, 255))
                tx = x + swatch + margin
                listed.append(name)
            draw.text((tx, y), name, fill=(255, 255, 255, 255), font=font)
        x += col_w
    out = Image.alpha_composite(base, overlay).convert("RGB")
    return np.asarray(out), listed


@dataclass
class Rendered:
    """An overlay picture and what its legend lists."""

    image: np.ndarray  # (H, W, 3) uint8
    legend: list[str] = field(default_factory=list)  # class names in the legend, largest area first
    legend_complete: bool = True  # False when some present classes were summarised as "+N more"


def render_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    alpha: float = 0.55,
    outlines: bool = True,
    legend: bool = True,
    font_size: Optional[int] = None,
) -> Rendered:
    """Colour every labelled pixel (alpha blend), outline the objects, add a legend of the classes present.

    ``labels`` (H, W) index ``class_names``; values < 0 stay unpainted. The result has the size of ``image``.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image is {image.shape[:2]} but labels are {labels.shape}")
    if labels.size and labels.max() >= len(class_names):
        raise ValueError(f"label {int(labels.max())} >= number of classes {len(class_names)}")
    painted = labels >= 0
    colors = colorize(labels, class_names).astype(np.float32)
    out = image.astype(np.float32)
    out[painted] = (1 - alpha) * out[painted] + alpha * colors[painted]
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if outlines:
        out[object_outlines(labels, class_names)] = OUTLINE_COLOR
    listed: list[str] = []
    complete = True
    if legend:
        ids, counts = np.unique(labels[painted], return_counts=True)
        order = [int(i) for _, i in sorted(zip(-counts, ids))]
        entries = [(class_names[i], class_color(class_names[i])) for i in order]
        out, listed = draw_legend(out, entries, font_size=font_size)
        complete = len(listed) == len(entries)
    return Rendered(out, listed, complete)


# ------------------------------------------------------------------------------------------ panels
def add_title(image: np.ndarray, title: str, font_size: Optional[int] = None) -> np.ndarray:
    """``image`` with a black strip on top holding ``title``."""
    from PIL import Image, ImageDraw

    size = font_size or _font_size_for(image.shape)
    strip_h = size + 8
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + strip_h), (0, 0, 0))
    canvas.paste(Image.fromarray(image), (0, strip_h))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(255, 255, 255), font=_font(size))
    return np.asarray(canvas)


def hstack_panels(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels side by side (equal heights) with a white gap."""
    h = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            p = np.concatenate([p, np.zeros((h - p.shape[0], p.shape[1], 3), np.uint8)], axis=0)
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(p)
    return np.concatenate(parts, axis=1)


def evaluation_panels(
    image: np.ndarray,
    gt: np.ndarray,
    pred_all: np.ndarray,
    oracle: np.ndarray,
    class_names: Sequence[str],
    *,
    ignore_label: int = 255,
    titles: Sequence[str] = ("GT", "Pred-All", "Oracle-Obj"),
    alpha: float = 0.55,
) -> np.ndarray:
    """GT | Pred-All | Oracle-Obj overlays of one evaluation record, side by side with titles.

    ``gt`` uses ``ignore_label`` for unscored pixels; ``pred_all`` uses index ``len(class_names)``
    for background; ``oracle`` is shown on the scored (GT) region only, where Oracle-Obj is measured.
    """
    n = len(class_names)
    gt = np.asarray(gt).astype(np.int64)
    valid = gt != ignore_label
    gt_labels = np.where(valid, gt, -1)
    pred_all = np.asarray(pred_all).astype(np.int64)
    pred_labels = np.where(pred_all >= n, -1, pred_all)
    oracle_labels = np.where(valid, np.asarray(oracle).astype(np.int64), -1)
    panels = []
    for title, labels in zip(titles, (gt_labels, pred_labels, oracle_labels)):
        rendered = render_overlay(image, labels, class_names, alpha=alpha)
        panels.append(add_title(rendered.image, title))
    return hstack_panels(panels)


def _resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Legacy-nearest resize (source index floor(dst * in / out)), as the evaluator resizes GT."""
    h, w = labels.shape
    oh, ow = size
    rows = np.minimum((np.arange(oh) * (h / oh)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(ow) * (w / ow)).astype(np.int64), w - 1)
    return labels[rows][:, cols]


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def record_panels(record: Mapping[str, Any], output: Mapping[str, Any], class_names: Sequence[str], ignore_label: int = 255) -> np.ndarray:
    """Panels for one evaluator record: ``record`` (``image`` CHW uint8, ``obj_part_sem_seg``) and the
    model's ``output`` (``sem_seg`` (C,H,W), ``sem_seg_all`` (C+1,H,W)) at the original size."""
    from PIL import Image

    sem_seg = _numpy(output["sem_seg"])
    sem_seg_all = _numpy(output["sem_seg_all"])
    h, w = sem_seg.shape[-2:]
    image = _numpy(record["image"])
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    gt = record.get("obj_part_sem_seg")
    gt = np.full((h, w), ignore_label, np.int64) if gt is None else _resize_nearest(_numpy(gt).astype(np.int64), (h, w))
    return evaluation_panels(
        image, gt, sem_seg_all.argmax(0), sem_seg.argmax(0), class_names, ignore_label=ignore_label
    )


def save_record_panels(
    record: Mapping[str, Any],
    output: Mapping[str, Any],
    class_names: Sequence[str],
    output_dir: str,
    ignore_label: int = 255,
) -> str:
    """Write :func:`record_panels` to ``output_dir/<image stem>[_obj<k>].png``; return the path."""
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(str(record.get("file_name", "record"))))[0]
    obj = record.get("object_class")
    name = f"{stem}_obj{int(obj)}.png" if obj is not None else f"{stem}.png"
    path = os.path.join(output_dir, name)
    Image.fromarray(record_panels(record, output, class_names, ignore_label)).save(path)
    return path
