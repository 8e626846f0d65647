"""The pictures of ``partcatseg.visualize``: palette distinctness, legend placement, fonts for any script.

Fast (no model): numpy label maps drawn with the real drawing code.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from partcatseg import visualize as V
from partcatseg.vocab import get_part_dataset

color = pytest.importorskip("skimage.color")


def min_delta_e(colors: np.ndarray) -> float:
    """Smallest CIEDE2000 distance between two of ``colors`` (N, 3) uint8 RGB."""
    lab = color.rgb2lab(colors[None].astype(np.float64) / 255.0)[0]
    i, j = np.triu_indices(len(colors), 1)
    return float(color.deltaE_ciede2000(lab[i], lab[j]).min())


def delta_e(a, b) -> float:
    lab = color.rgb2lab(np.array([[a, b]], np.float64) / 255.0)[0]
    return float(color.deltaE_ciede2000(lab[0], lab[1]))


# ------------------------------------------------------------------------------------------ palette
def test_palette_is_distinct_for_the_toy_and_pascal_vocabularies():
    # measured: the old name-hash hues gave min dE2000 4.0 (toy, 16 classes) and 0.32 (Pascal-Part-116)
    toy = list(get_part_dataset("toy_part").class_names)
    pascal = list(get_part_dataset("pascal_part_116").class_names)
    assert min_delta_e(V.palette(toy)) > 18.0  # measured 18.49
    assert min_delta_e(V.palette(pascal)) > 6.4  # measured 6.54 (20x the old minimum)
    # the pairs that were all yellow-green (dE2000 6 to 9) are now far apart (measured 31 to 53)
    for a, b in [("car's body", "car's wheel"), ("car's body", "house's window"),
                 ("car's wheel", "robot's torso"), ("house's window", "robot's torso")]:
        assert delta_e(V.class_color(a, toy), V.class_color(b, toy)) > 25, (a, b)


def test_palette_is_stable_per_vocabulary_and_follows_colorcet():
    import colorcet

    names = ["cat's head", "cat's ear", "dog's head"]
    expected = [tuple(int(h[k : k + 2], 16) for k in (1, 3, 5)) for h in colorcet.glasbey_light[:3]]
    assert [tuple(c) for c in V.palette(names)] == expected  # by index in the vocabulary
    assert [V.class_color(n, names) for n in names] == expected
    assert V.class_color("cat's head") == V.class_color("cat's head")  # no vocabulary: by name, stable
    labels = np.array([[0, 1], [2, -1]])
    np.testing.assert_array_equal(V.colorize(labels, names), [[expected[0], expected[1]], [expected[2], (0, 0, 0)]])


def test_large_vocabularies_keep_distinct_colours():
    names = [f"class {i}" for i in range(600)]
    colors = V.palette(names)
    assert len({tuple(c) for c in colors}) == 600
    np.testing.assert_array_equal(colors[:256], V.palette(names[:256]))  # the first 256 are Glasbey's
    lab = color.rgb2lab(colors[None].astype(np.float64) / 255.0)[0]
    i, j = np.triu_indices(600, 1)
    assert np.linalg.norm(lab[i] - lab[j], axis=1).min() > 7.0  # CIE76; measured 7.15 (= Glasbey's own minimum)


# ------------------------------------------------------------------------------------------ legend
def five_classes(h: int, w: int):
    names = ["robot's head", "robot's torso", "car's body", "car's wheel", "house's window"]
    labels = np.full((h, w), -1)
    for k in range(5):
        labels[:, k * w // 6 : (k + 1) * w // 6] = k
    image = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    return image, labels, names


def test_legend_goes_beside_a_small_image():
    image, labels, names = five_classes(64, 64)
    inside = V.render_overlay(image, labels, names, legend_placement="inside")
    plain = V.render_overlay(image, labels, names, legend=False)
    covered = np.any(inside.image != plain.image, axis=-1).mean()
    assert covered > 0.5  # drawn inside (the old behaviour), the legend hides most of the picture

    rendered = V.render_overlay(image, labels, names)
    assert rendered.legend_placement in ("right", "below") and rendered.legend_complete
    assert sorted(rendered.legend) == sorted(names)
    out = rendered.image
    assert out.shape[0] * out.shape[1] > 64 * 64 and (out.shape[0] >= 64 and out.shape[1] >= 64)
    assert rendered.image_box == (0, 0, 64, 64)
    np.testing.assert_array_equal(out[:64, :64], plain.image)  # the picture: only the blend and outlines
    assert plain.image.shape == image.shape
    # the legend beside the picture carries the swatches of the overlay's colours
    rest = out[64:] if rendered.legend_placement == "below" else out[:, 64:]
    for name in names:
        assert np.any(np.all(rest == V.class_color(name, names), axis=-1)), name


def test_legend_stays_inside_when_small_and_goes_below_a_wide_strip():
    image, labels, names = five_classes(300, 450)
    rendered = V.render_overlay(image, labels, names)
    assert rendered.legend_placement == "inside" and rendered.image.shape == image.shape
    changed = np.any(rendered.image != V.render_overlay(image, labels, names, legend=False).image, axis=-1)
    assert 0 < changed.mean() <= V.LEGEND_INSIDE_MAX_FRACTION
    # many classes on a wide strip: a legend to the right would be far taller than the strip
    strip = np.zeros((40, 600, 3), np.uint8)
    many = [f"class {k}" for k in range(15)]
    stripes = np.repeat(np.arange(15), 40)[None].repeat(40, 0)
    wide = V.render_overlay(strip, stripes, many)
    assert wide.legend_placement == "below" and wide.image.shape[1] == 600 and wide.image.shape[0] > 40
    assert wide.legend_complete and len(wide.legend) == 15
    np.testing.assert_array_equal(wide.image[:40], V.render_overlay(strip, stripes, many, legend=False).image)


# ------------------------------------------------------------------------------------------ fonts
def _render(text: str, size: int = 20) -> np.ndarray:
    """``text`` drawn on a fixed canvas (so that renderings compare pixel by pixel)."""
    from PIL import Image

    img = Image.new("L", (12 * size, 2 * size))
    V.draw_text(img, (2, 2), text, size, 255)
    return np.asarray(img)


def installed_fonts_for(ch: str) -> list[str]:
    """Font files that have ``ch``, found independently of the code under test (fontconfig)."""
    if shutil.which("fc-list") is None:
        return []
    out = subprocess.run(["fc-list", "-f", "%{file}\n", f":charset={ord(ch):x}"], capture_output=True, text=True, timeout=30)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_cjk_class_names_are_not_tofu():
    cjk = "猫的头"
    if not installed_fonts_for("猫") and not any(os.path.isfile(p) for p in V._FALLBACK_FONTS):
        pytest.skip("no font with CJK glyphs installed (Debian: apt-get install fonts-wqy-microhei)")
    fonts = V.text_fonts(20)
    primary = fonts.primary
    font = fonts.font_for("猫")
    assert font is not primary
    # the primary font draws the same box for every CJK character and for an unassigned code point
    assert V._glyph_signature(primary, "猫") == V._glyph_signature(primary, V._MISSING_PROBE)
    drawn = _render(cjk)
    tofu = _render(V._MISSING_PROBE * 3)  # what an undefined glyph looks like: three boxes
    assert drawn.any() and not np.array_equal(drawn, tofu)
    glyphs = [_render(ch) for ch in cjk]
    assert len({g.tobytes() for g in glyphs}) == 3  # three different glyphs, not three equal boxes
    # mixed text: Latin from the primary font, the CJK characters from the fallback
    runs = V.text_fonts(20).runs("cat's 头")
    assert [r for r, _ in runs] == ["cat's ", "头"] and runs[0][1] is primary and runs[1][1] is font
    # the legend draws it: the CJK entry's row differs from the same legend with a tofu name
    image = np.zeros((40, 60, 3), np.uint8)
    labels = np.zeros((40, 60), int)
    with_cjk = V.render_overlay(image, labels, ["猫's 头"]).image
    with_box = V.render_overlay(image, labels, ["猫's " + V._MISSING_PROBE]).image
    assert not np.array_equal(with_cjk, with_box)  # equal if both names were drawn as boxes


def test_emoji_use_a_font_that_has_them():
    if not installed_fonts_for("🐶"):
        pytest.skip("no font with emoji glyphs installed (Debian: apt-get install fonts-symbola)")
    assert not np.array_equal(_render("🐶"), _render(V._MISSING_PROBE))
    assert not np.array_equal(_render("🐶"), _render("🐱"))


def test_colour_emoji_fonts_are_drawn_scaled():
    scaled = [p for p in installed_fonts_for("🐶") if isinstance(V._load_font(p, 0, 20), V._ScaledBitmapFont)]
    if not scaled:
        pytest.skip("no bitmap-only colour emoji font installed (Debian: apt-get install fonts-noto-color-emoji)")
    from PIL import Image

    font = V._load_font(scaled[0], 0, 20)
    assert V._has_glyph(font, "🐶") and not V._has_glyph(font, "a")
    img = Image.new("RGB", (60, 40))
    V._draw_scaled(img, (4, 30), "🐶", font)
    pixels = np.asarray(img).astype(int)
    box = img.getbbox()
    assert box is not None and 12 <= box[3] - box[1] <= 26 and 12 <= box[2] - box[0] <= 26  # about 20 px
    assert np.any(np.ptp(pixels, axis=-1) > 60)  # in colour
    assert 14 <= V._measure("🐶", font) <= 28
