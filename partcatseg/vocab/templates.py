"""CLIP prompt templates.

Every class name is embedded once per template; the model keeps one cost-volume channel per
template, so the *number and order* of templates is part of the checkpoint contract (80 for the
released PartCATSeg / CAT-Seg weights). The lists are data and are reproduced exactly from
CAT-Seg's ``cat_seg/third_party/imagenet_templates.py`` (which copies OpenAI's ImageNet list).

Public API: ``IMAGENET_TEMPLATES`` (80), ``IMAGENET_TEMPLATES_SELECT`` (8), ``SINGLE_TEMPLATE`` (1),
``TEMPLATE_KINDS`` and ``get_templates(kind)``.
"""
from __future__ import annotations

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "A photo of a {} in the scene",
)

SINGLE_TEMPLATE: tuple[str, ...] = ("A photo of a {} in the scene",)

# Names follow the official ``MODEL.PROMPT_ENSEMBLE_TYPE`` values.
_KINDS: dict[str, tuple[str, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "imagenet_select": IMAGENET_TEMPLATES_SELECT,
    "single": SINGLE_TEMPLATE,
}
TEMPLATE_KINDS: tuple[str, ...] = tuple(_KINDS)


def get_templates(kind: str) -> list[str]:
    """Return a fresh list of the templates for ``kind`` (one of ``TEMPLATE_KINDS``)."""
    try:
        return list(_KINDS[kind])
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown prompt template kind {kind!r}; expected one of {list(TEMPLATE_KINDS)}"
        ) from None
