"""Pictures of segmentations: coloured overlays, object outlines, legends and evaluation panels.

Used by the demo CLI (``partcatseg.cli.demo``) and by the evaluator's optional visual output
(``TEST.VISUALIZE``: GT | Pred-All | Oracle-Obj panels per record). Everything is plain numpy +
Pillow (+ OpenCV for dilation).

Colours come from colorcet's Glasbey palette ``glasbey_light`` (256 colours chosen one by one to be
as far apart as possible in a perceptual colour space; no greys, none dark, so that they show on
photos and on the legend's black background) and are assigned by the
class's *index in the vocabulary*: the classes of one vocabulary get distinct colours, and a class
keeps its colour in every image and run that uses the same vocabulary. The overlay, its legend and
every panel of one vocabulary use :func:`palette`, so they always agree. Vocabularies of more than
256 classes continue with colours picked the same way (farthest from all earlier ones in CIELAB).

Text (legends, titles) is drawn with DejaVu Sans when installed (else Pillow's bundled font); a
character that font lacks (Chinese, Japanese, Korean, emoji, ...) is drawn with the first installed
font that has it: ``$PARTCATSEG_FONTS`` (font files, ``os.pathsep``-separated), then known CJK
fonts (Noto Sans CJK, Droid Sans Fallback, WenQuanYi, ...), then whatever fontconfig's ``fc-list``
finds for that character.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .vocab import SEP, split_part_name

__all__ = [
    "palette",
    "class_color",
    "object_of",
    "object_map",
    "object_outlines",
    "colorize",
    "text_fonts",
    "draw_text",
    "text_width",
    "draw_legend",
    "LEGEND_INSIDE_MAX_FRACTION",
    "render_overlay",
    "Rendered",
    "add_title",
    "hstack_panels",
    "evaluation_panels",
    "record_panels",
    "save_record_panels",
]

OUTLINE_COLOR = (255, 255, 255)
#: The legend is drawn inside the picture only if it covers at most this fraction of it (and lists
#: every class); otherwise it goes beside the picture (to the right, or below for wide pictures).
LEGEND_INSIDE_MAX_FRACTION = 0.10
_RIGHT_LEGEND_MAX_COLUMNS = 3


# ------------------------------------------------------------------------------------------ colours
@functools.lru_cache(maxsize=None)
def _glasbey() -> np.ndarray:
    """colorcet's ``glasbey_light`` (= ``glasbey_bw_minc_20_minl_30``): (256, 3) uint8, most distinct first."""
    import colorcet

    return np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in colorcet.glasbey_light], dtype=np.uint8)


@functools.lru_cache(maxsize=8)
def _extended_palette(n: int) -> np.ndarray:
    """At least ``n`` colours: Glasbey's 256, then greedily the candidate farthest (CIELAB) from all chosen."""
    base = _glasbey()
    if n <= len(base):
        return base
    from skimage.color import rgb2lab

    axis = np.arange(0, 256, 8, dtype=np.float64)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    lab = rgb2lab(grid[None] / 255.0)[0]
    keep = (lab[:, 0] >= 37) & (lab[:, 0] <= 95) & (np.hypot(lab[:, 1], lab[:, 2]) >= 20)  # like glasbey_light
    grid, lab = grid[keep], lab[keep]
    chosen_lab = rgb2lab(base[None].astype(np.float64) / 255.0)[0]
    dist = np.min(np.linalg.norm(lab[:, None, :] - chosen_lab[None, :, :], axis=2), axis=1)
    extra = []
    for _ in range(n - len(base)):
        k = int(dist.argmax())
        extra.append(grid[k])
        dist = np.minimum(dist, np.linalg.norm(lab - lab[k], axis=1))
    return np.concatenate([base, np.array(extra, dtype=np.uint8)], axis=0)


def palette(class_names: Sequence[str]) -> np.ndarray:
    """(N, 3) uint8: the colour of each class of a vocabulary (by its index; stable for the vocabulary)."""
    n = len(class_names)
    return _extended_palette(-(-max(n, 1) // 256) * 256)[:n].copy()


def class_color(name: str, class_names: Optional[Sequence[str]] = None) -> tuple[int, int, int]:
    """RGB colour of ``name``: its :func:`palette` colour in ``class_names`` (the vocabulary).

    Without a vocabulary (or for a name not in it), a Glasbey colour chosen by a hash of the name:
    stable across runs, but two names may then share a colour.
    """
    if class_names is not None:
        names = list(class_names)
        if name in names:
            r, g, b = palette(names)[names.index(name)]
            return int(r), int(g), int(b)
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    r, g, b = _glasbey()[int.from_bytes(digest[:4], "big") % len(_glasbey())]
    return int(r), int(g), int(b)


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


def _palette_with_none(class_names: Sequence[str]) -> np.ndarray:
    return np.concatenate([palette(class_names), np.zeros((1, 3), np.uint8)], axis=0)


def colorize(labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8 colour image of ``labels`` (black where < 0)."""
    labels = np.asarray(labels)
    return _palette_with_none(class_names)[np.where(labels >= 0, labels, len(class_names))]


# ------------------------------------------------------------------------------------------ text
_PRIMARY_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian / Ubuntu
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora / Arch
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/DejaVuSans.ttf",
)
_FALLBACK_FONTS = (  # fonts with CJK coverage, best first
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/google-droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simsun.ttc",
    "C:/Windows/Fonts/seguiemj.ttf",
)
_MISSING_PROBE = "\U0010fffd"  # a private-use code point no font maps: renders as the font's "tofu" box


@functools.lru_cache(maxsize=None)
def _fc_list(pattern: str) -> tuple[tuple[str, int], ...]:
    """Font files (path, face index) fontconfig lists for ``pattern``, regular styles first; () without fontconfig."""
    exe = shutil.which("fc-list")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-f", "%{file}|%{index}|%{style}\n", pattern], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    found = []
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        try:
            index = int(parts[1].split(",")[0] or 0)
        except ValueError:
            index = 0
        style = parts[2].lower() if len(parts) > 2 else ""
        regular = any(s in style for s in ("regular", "book", "normal")) and not any(
            s in style for s in ("bold", "italic", "oblique", "light", "thin"))
        found.append((not regular, parts[0], index))
    return tuple((path, index) for _, path, index in sorted(set(found)))


_BITMAP_EMOJI_SIZE = 109  # the one size of bitmap-only colour emoji fonts (Noto Color Emoji)


class _ScaledBitmapFont:
    """A bitmap-only font (colour emoji) used at its one size and scaled to ``size`` when drawn."""

    def __init__(self, font, size: int):
        self.font = font
        self.scale = size / float(_BITMAP_EMOJI_SIZE)


@functools.lru_cache(maxsize=64)
def _load_font(path: str, index: int, size: int):
    """A FreeType font, a :class:`_ScaledBitmapFont` (colour emoji), or None if the file cannot be used."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, size, index=index)
    except (OSError, ValueError):
        pass
    try:  # bitmap-only fonts load at their own size only ("invalid pixel size" otherwise)
        return _ScaledBitmapFont(ImageFont.truetype(path, _BITMAP_EMOJI_SIZE, index=index), size)
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=16)
def _default_font(size: int):
    from PIL import ImageFont

    for path in _PRIMARY_FONTS:
        if os.path.isfile(path):
            font = _load_font(path, 0, size)
            if font is not None:
                return font
    for path, index in _fc_list("DejaVu Sans:style=Book"):
        font = _load_font(path, index, size)
        if font is not None:
            return font
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable bundled font
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _font_files() -> list[tuple[str, int]]:
    """Configured and known fallback font files that exist (``$PARTCATSEG_FONTS`` first), then fontconfig's CJK fonts."""
    files = [(p, 0) for p in os.environ.get("PARTCATSEG_FONTS", "").split(os.pathsep) if p]
    files += [(p, 0) for p in _FALLBACK_FONTS if os.path.isfile(p)]
    for lang in ("zh", "ja", "ko"):
        files += list(_fc_list(f":lang={lang}"))
    unique, paths = [], set()
    for path, index in files:
        if path not in paths:  # one face per file (the regular one, listed first)
            paths.add(path)
            unique.append((path, index))
    return unique


def _glyph_signature(font, ch: str) -> tuple:
    from PIL import Image, ImageDraw

    if isinstance(font, _ScaledBitmapFont):  # its glyphs at their own size
        font = font.font
    left, top, right, bottom = font.getbbox(ch)
    img = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(img).text((-left, -top), ch, font=font, fill=255)
    return img.size, img.tobytes()


_GLYPHS: dict[tuple[Any, str], bool] = {}
_MISSING: dict[Any, tuple] = {}


def _has_glyph(font, ch: str) -> bool:
    """Whether ``font`` draws ``ch`` as something else than its missing-glyph box."""
    key = (font, ch)
    if key not in _GLYPHS:
        try:
            if font not in _MISSING:
                _MISSING[font] = _glyph_signature(font, _MISSING_PROBE)
            _GLYPHS[key] = _glyph_signature(font, ch) != _MISSING[font]
        except Exception:  # noqa: BLE001 - a font that cannot render the character does not have it
            _GLYPHS[key] = False
    return _GLYPHS[key]


def _attaches(ch: str) -> bool:
    """Characters drawn with the preceding character's font (joiners, variation selectors, combining marks)."""
    return unicodedata.category(ch) in ("Mn", "Me", "Cf")


class _Fonts:
    """The primary font and, on demand, fallback fonts of one size; splits text into runs per font."""

    def __init__(self, size: int):
        self.size = size
        self.primary = _default_font(size)
        self._files: Optional[list[tuple[str, int]]] = None
        self._by_char: dict[str, Any] = {}

    @property
    def freetype(self) -> bool:
        from PIL import ImageFont

        return isinstance(self.primary, ImageFont.FreeTypeFont)

    def _candidates(self, ch: str):
        """Fallback fonts for ``ch``, loaded lazily: configured/known CJK fonts, then fontconfig's for ``ch``."""
        if self._files is None:
            self._files = _font_files()
        for path, index in list(self._files) + list(_fc_list(f":charset={ord(ch):x}")):
            font = _load_font(path, index, self.size)
            if font is not None:
                yield font

    def font_for(self, ch: str):
        if ch in self._by_char:
            return self._by_char[ch]
        chosen = self.primary
        if self.freetype and not ch.isspace() and not _has_glyph(self.primary, ch):
            chosen = next((font for font in self._candidates(ch) if _has_glyph(font, ch)), self.primary)
        self._by_char[ch] = chosen
        return chosen

    def runs(self, text: str) -> list[tuple[str, Any]]:
        runs: list[tuple[str, Any]] = []
        for ch in text:
            font = runs[-1][1] if runs and _attaches(ch) else self.font_for(ch)
            if runs and runs[-1][1] is font:
                runs[-1] = (runs[-1][0] + ch, font)
            else:
                runs.append((ch, font))
        return runs


@functools.lru_cache(maxsize=16)
def text_fonts(size: int) -> _Fonts:
    """The fonts text of ``size`` pixels is drawn with (see the module docstring)."""
    return _Fonts(size)


def _measure(run: str, font) -> float:
    from PIL import Image, ImageDraw

    if isinstance(font, _ScaledBitmapFont):
        return ImageDraw.Draw(Image.new("L", (1, 1))).textlength(run, font=font.font) * font.scale
    return ImageDraw.Draw(Image.new("L", (1, 1))).textlength(run, font=font)


def _draw_scaled(image, xy: tuple[float, float], run: str, font: _ScaledBitmapFont) -> None:
    """``run`` in its own colours at the font's size, scaled, composited with its baseline at ``xy``."""
    from PIL import Image, ImageDraw

    ascent, descent = font.font.getmetrics()
    width = max(1, int(math.ceil(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(run, font=font.font))))
    glyphs = Image.new("RGBA", (width, ascent + descent), (0, 0, 0, 0))
    ImageDraw.Draw(glyphs).text((0, ascent), run, font=font.font, anchor="ls", embedded_color=True)
    size = (max(1, round(width * font.scale)), max(1, round((ascent + descent) * font.scale)))
    glyphs = glyphs.resize(size, Image.LANCZOS)
    x, y = int(round(xy[0])), int(round(xy[1] - ascent * font.scale))
    if image.mode == "RGBA":
        image.alpha_composite(glyphs, (max(0, x), max(0, y)))
    else:
        image.paste(glyphs.convert(image.mode), (x, y), glyphs)


def text_width(text: str, size: int) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_text` at ``size``."""
    return int(math.ceil(sum(_measure(run, font) for run, font in text_fonts(size).runs(text))))


def draw_text(image, xy: tuple[float, float], text: str, size: int, fill) -> None:
    """Draw ``text`` on the PIL ``image`` with its top-left at ``xy``, each character in the first font that has it."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    fonts = text_fonts(size)
    x, y = xy
    if not fonts.freetype:  # old Pillow without FreeType: one bitmap font, no fallback
        draw.text((x, y), text, fill=fill, font=fonts.primary)
        return
    baseline = y + fonts.primary.getmetrics()[0]
    for run, font in fonts.runs(text):
        if isinstance(font, _ScaledBitmapFont):
            _draw_scaled(image, (x, baseline), run, font)
        else:
            draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
        x += _measure(run, font)


def _font_size_for(shape: tuple[int, ...]) -> int:
    return int(min(22, max(10, round(min(shape[:2]) / 26))))


# ------------------------------------------------------------------------------------------ legend
Entry = tuple[str, Optional[tuple[int, int, int]]]


@dataclass
class _Layout:
    columns: list[list[Entry]]
    widths: list[int]
    line_h: int
    swatch: int
    margin: int

    @property
    def width(self) -> int:
        return self.margin + sum(self.widths)

    @property
    def height(self) -> int:
        return max((len(c) for c in self.columns), default=0) * self.line_h + self.margin

    @property
    def listed(self) -> list[str]:
        return [name for col in self.columns for name, color in col if color is not None]


def _column_width(names: Sequence[str], size: int, swatch: int, margin: int) -> int:
    return max(text_width(n, size) for n in names) + swatch + 3 * margin


def _layout_columns(entries: Sequence[Entry], rows: int, size: int, margin: int) -> _Layout:
    rows = max(1, rows)
    columns = [list(entries[i : i + rows]) for i in range(0, len(entries), rows)]
    widths = [_column_width([n for n, _ in c], size, size, margin) for c in columns]
    return _Layout(columns, widths, size + 4, size, margin)


def _layout_inside(entries: Sequence[Entry], h: int, w: int, size: int, margin: int) -> _Layout:
    """Columns within the picture; what does not fit is summarised as "+N more"."""
    line_h = size + 4
    rows_fit = max(1, (h - 2 * margin) // line_h)
    columns: list[list[Entry]] = []
    widths: list[int] = []
    x_total = margin
    remaining = list(entries)
    while remaining:
        col = remaining[:rows_fit]
        col_w = _column_width([n for n, _ in col], size, size, margin)
        if x_total + col_w > w and columns:
            break
        columns.append(col)
        widths.append(col_w)
        x_total += col_w
        remaining = remaining[len(col) :]
    if remaining:  # replace the last entry shown with a "+N more" line
        last = columns[-1]
        remaining.insert(0, last.pop())
        last.append((f"+{len(remaining)} more", None))
        widths[-1] = _column_width([n for n, _ in last], size, size, margin)
    return _Layout(columns, widths, line_h, size, margin)


def _layout_right(entries: Sequence[Entry], h: int, size: int, margin: int) -> _Layout:
    rows_fit = max(1, (h - margin) // (size + 4))
    return _layout_columns(entries, max(rows_fit, -(-len(entries) // _RIGHT_LEGEND_MAX_COLUMNS)), size, margin)


def _layout_below(entries: Sequence[Entry], w: int, size: int, margin: int) -> _Layout:
    """The fewest rows whose columns fit the picture's width (one column if none do)."""
    for rows in range(1, len(entries) + 1):
        layout = _layout_columns(entries, rows, size, margin)
        if layout.width <= w:
            return layout
    return _layout_columns(entries, len(entries), size, margin)


def _paint_legend(image, layout: _Layout, origin: tuple[int, int], size: int, background) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image, "RGBA")
    x0, y0 = origin
    if background is not None:
        draw.rectangle([x0, y0, x0 + layout.width, y0 + layout.height], fill=background)
    x = x0 + layout.margin
    for col, col_w in zip(layout.columns, layout.widths):
        for row, (name, color) in enumerate(col):
            y = y0 + layout.margin + row * layout.line_h
            tx = x
            if color is not None:
                s = layout.swatch
                draw.rectangle([x, y, x + s - 1, y + s - 1], fill=tuple(int(c) for c in color) + (255,),
                               outline=(255, 255, 255, 255))
                tx = x + s + layout.margin
            draw_text(image, (tx, y), name, size, (255, 255, 255, 255))
        x += col_w


@dataclass
class _Placed:
    image: np.ndarray
    listed: list[str]
    placement: Optional[str]
    image_box: tuple[int, int, int, int]  # x, y, width, height of the picture inside ``image``


def _place_legend(image: np.ndarray, entries: Sequence[Entry], *, placement: str = "auto",
                  font_size: Optional[int] = None, margin: int = 4) -> _Placed:
    from PIL import Image

    h, w = image.shape[:2]
    if placement not in ("auto", "inside", "beside", "right", "below"):
        raise ValueError(f"legend placement must be auto, inside, beside, right or below; got {placement!r}")
    if not entries:
        return _Placed(image.copy(), [], None, (0, 0, w, h))
    size = font_size or _font_size_for(image.shape)
    inside = _layout_inside(entries, h, w, size, margin)
    if placement == "auto":
        covered = min(inside.width, w) * min(inside.height, h) / float(h * w)
        small = len(inside.listed) == len(entries) and covered <= LEGEND_INSIDE_MAX_FRACTION
        placement = "inside" if small else "beside"
    if placement == "beside":  # wherever the canvas grows less
        right, below = _layout_right(entries, h, size, margin), _layout_below(entries, w, size, margin)
        right_area = (w + right.width + margin) * max(h, right.height + margin)
        below_area = max(w, below.width + margin) * (h + below.height + margin)
        placement = "right" if right_area <= below_area else "below"
    if placement == "inside":
        base = Image.fromarray(image).convert("RGBA")
        overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
        _paint_legend(overlay, inside, (0, 0), size, (0, 0, 0, 150))
        out = Image.alpha_composite(base, overlay).convert("RGB")
        return _Placed(np.asarray(out), inside.listed, "inside", (0, 0, w, h))
    if placement == "right":
        layout = _layout_right(entries, h, size, margin)
        canvas = Image.new("RGB", (w + layout.width + margin, max(h, layout.height + margin)), (0, 0, 0))
        origin = (w, 0)
    else:
        layout = _layout_below(entries, w, size, margin)
        canvas = Image.new("RGB", (max(w, layout.width + margin), h + layout.height + margin), (0, 0, 0))
        origin = (0, h)
    canvas.paste(Image.fromarray(image), (0, 0))
    _paint_legend(canvas, layout, origin, size, None)
    return _Placed(np.asarray(canvas), layout.listed, placement, (0, 0, w, h))


def draw_legend(
    image: np.ndarray,
    entries: Sequence[tuple[str, tuple[int, int, int]]],
    *,
    font_size: Optional[int] = None,
    margin: int = 4,
    placement: str = "inside",
) -> tuple[np.ndarray, list[str]]:
    """Add a legend (colour swatch + name per entry) to ``image``; return the new image and the names listed.

    ``placement="inside"`` draws it in the top-left corner (the output keeps the input's size):
    entries flow into columns and, if they still do not fit, the rest is summarised as "+N more".
    ``"right"`` / ``"below"`` extend the canvas (black) and list every entry there; ``"beside"``
    is whichever of the two grows the canvas less; ``"auto"`` draws inside when that covers at most
    :data:`LEGEND_INSIDE_MAX_FRACTION` of the picture and lists everything, else ``"beside"``. The picture itself is always
    at the top-left of the output, unchanged outside an inside legend.
    """
    placed = _place_legend(image, entries, placement=placement, font_size=font_size, margin=margin)
    return placed.image, placed.listed


@dataclass
class Rendered:
    """An overlay picture and what its legend lists."""

    image: np.ndarray  # (H', W', 3) uint8: the input's size, or larger with the legend beside the picture
    legend: list[str] = field(default_factory=list)  # class names in the legend, largest area first
    legend_complete: bool = True  # False when some present classes were summarised as "+N more"
    legend_placement: Optional[str] = None  # "inside", "right", "below"; None without a legend
    image_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, width, height of the picture in ``image``


def render_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    alpha: float = 0.55,
    outlines: bool = True,
    legend: bool = True,
    legend_placement: str = "auto",
    font_size: Optional[int] = None,
) -> Rendered:
    """Colour every labelled pixel (alpha blend), outline the objects, add a legend of the classes present.

    ``labels`` (H, W) index ``class_names``; values < 0 stay unpainted. Colours are
    :func:`palette` (``class_names``)'s. Without a legend the result has the size of ``image``;
    with one it may be larger (see :func:`draw_legend` for ``legend_placement``): the picture is
    then the top-left ``image_box`` of the result.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image is {image.shape[:2]} but labels are {labels.shape}")
    if labels.size and labels.max() >= len(class_names):
        raise ValueError(f"label {int(labels.max())} >= number of classes {len(class_names)}")
    h, w = labels.shape
    painted = labels >= 0
    colors = palette(class_names)
    out = image.astype(np.float32)
    out[painted] = (1 - alpha) * out[painted] + alpha * colors[labels[painted]].astype(np.float32)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if outlines:
        out[object_outlines(labels, class_names)] = OUTLINE_COLOR
    if not legend:
        return Rendered(out, [], True, None, (0, 0, w, h))
    ids, counts = np.unique(labels[painted], return_counts=True)
    order = [int(i) for _, i in sorted(zip(-counts, ids))]
    entries = [(class_names[i], tuple(int(c) for c in colors[i])) for i in order]
    placed = _place_legend(out, entries, placement=legend_placement, font_size=font_size)
    return Rendered(placed.image, placed.listed, len(placed.listed) == len(entries), placed.placement, placed.image_box)


# ------------------------------------------------------------------------------------------ panels
def add_title(image: np.ndarray, title: str, font_size: Optional[int] = None) -> np.ndarray:
    """``image`` with a black strip on top holding ``title``."""
    from PIL import Image

    size = font_size or _font_size_for(image.shape)
    strip_h = size + 8
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + strip_h), (0, 0, 0))
    canvas.paste(Image.fromarray(image), (0, strip_h))
    draw_text(canvas, (4, 3), title, size, (255, 255, 255))
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
    legend: bool = True,
) -> np.ndarray:
    """GT | Pred-All | Oracle-Obj overlays of one evaluation record, side by side with titles, and
    one legend of the classes in any of them beside the panels (the strip is the top-left of the result).

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
    areas = np.zeros(n, np.int64)
    for title, labels in zip(titles, (gt_labels, pred_labels, oracle_labels)):
        rendered = render_overlay(image, labels, class_names, alpha=alpha, legend=False)
        panels.append(add_title(rendered.image, title))
        areas += np.bincount(labels[labels >= 0].ravel(), minlength=n)[:n]
    strip = hstack_panels(panels)
    if not legend:
        return strip
    # one legend for the three panels (they share the colours), beside them so no panel is covered
    colors = palette(class_names)
    order = [int(i) for i in np.argsort(-areas, kind="stable") if areas[i] > 0]
    entries = [(class_names[i], tuple(int(c) for c in colors[i])) for i in order]
    return _place_legend(strip, entries, placement="beside", font_size=_font_size_for(image.shape)).image


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
