"""Data augmentation with detectron2 semantics, without detectron2.

Geometric transforms are fvcore ``Transform`` objects (deterministic once built); the random
*policies* that build them (``Augmentation`` subclasses) draw every random number from an explicit
``AugRandom`` so that a sample's augmentation is a pure function of its seed. That is what makes the
training loader reproducible and resumable independently of worker scheduling (see ``build.py``).

Behaviour reproduced from detectron2 0.6 / the official mappers:

* ``ResizeShortestEdge``: short side sampled by "choice" or "range", long side capped at ``max_size``,
  new size rounded with ``int(x + 0.5)``.
* ``ResizeTransform``: uint8 images go through PIL (bilinear by default; PIL's resampling filters are
  antialiased when downscaling, exactly as detectron2 does it); float images through
  ``F.interpolate(bilinear, align_corners=False)``; label maps through torch **legacy nearest**
  (``F.interpolate(mode="nearest")``) on a float copy, as the official ``AugInput2`` path does on its
  float64 label maps.
* ``RandomCrop_CategoryAreaConstraint``: with ``single_category_max_area >= 1`` a plain random crop of
  ``min(crop, h) x min(crop, w)`` ("absolute"); otherwise up to 10 tries to find a crop where no single
  category (ignoring ``ignored_category``) covers more than the given fraction.
* ``ColorAugSSD`` / ``ColorAugSSDTransform``: the SSD photometric distortion of detectron2's PointRend
  project (brightness +-32, contrast 0.5-1.5, saturation 0.5-1.5 and hue +-18 in OpenCV HSV, each with
  p=0.5, contrast before or after saturation+hue at random). The official transform draws its numbers
  from Python ``random`` while it runs; here the same numbers are drawn in the same order from
  ``AugRandom.py`` up front, so the resulting transform is deterministic and image-only.
* ``RandomFlip``: horizontal (or vertical) with probability 0.5.
* ``AugInput``: one image plus the object map (``sem_seg``) and the part map (``part_sem_seg``), all
  moved by the same geometric transform (official ``AugInput2``).
"""
from __future__ import annotations

import abc

import random
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from fvcore.transforms.transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
    VFlipTransform,
)
from PIL import Image

__all__ = [
    "AugRandom",
    "Augmentation",
    "AugInput",
    "apply_augmentations",
    "ResizeShortestEdge",
    "ResizeTransform",
    "RandomCrop",
    "RandomCrop_CategoryAreaConstraint",
    "RandomFlip",
    "ColorAugSSD",
    "ColorAugSSDTransform",
    # re-exported fvcore transforms
    "Transform",
    "TransformList",
    "CropTransform",
    "HFlipTransform",
    "VFlipTransform",
    "NoOpTransform",
    "PadTransform",
]


# ----------------------------------------------------------------------------------------------
# randomness
# ----------------------------------------------------------------------------------------------
@dataclass
class AugRandom:
    """The two random streams augmentations draw from.

    ``np`` serves the geometric policies (detectron2 used the global numpy RNG); ``py`` serves the SSD
    colour distortion (detectron2 used the global Python ``random``). Build one per sample with
    ``AugRandom.from_seed(seed, sample_index, ...)`` so results do not depend on which worker ran it.
    """

    np: np.random.Generator
    py: random.Random

    @classmethod
    def from_seed(cls, *keys: int) -> "AugRandom":
        """Independent streams derived from a tuple of non-negative integers (e.g. seed, index)."""
        if not keys:
            raise ValueError("AugRandom.from_seed needs at least one integer key")
        ss = np.random.SeedSequence([int(k) for k in keys])
        np_ss, py_ss = ss.spawn(2)
        py_seed = int.from_bytes(py_ss.generate_state(4, dtype=np.uint32).tobytes(), "little")
        return cls(np=np.random.default_rng(np_ss), py=random.Random(py_seed))

    @classmethod
    def fresh(cls) -> "AugRandom":
        """Non-reproducible streams seeded from OS entropy (for ad-hoc use outside the loaders)."""
        ss = np.random.SeedSequence()
        return cls.from_seed(*[int(x) for x in ss.generate_state(4)])


# ----------------------------------------------------------------------------------------------
# inputs and policies
# ----------------------------------------------------------------------------------------------
def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"AugInput: the image must be a numpy array, got {type(img).__name__}")
    if img.ndim not in (2, 3):
        raise ValueError(f"AugInput: the image must be HxW or HxWxC, got shape {img.shape}")
    if np.issubdtype(img.dtype, np.integer) and img.dtype != np.uint8:
        raise ValueError(f"AugInput: integer images must be uint8 (use float for others), got {img.dtype}")


class AugInput:
    """An image plus the label maps that must follow its geometry (official ``AugInput2``).

    ``sem_seg`` is the map policies may look at (``RandomCrop_CategoryAreaConstraint``): the object map
    for part datasets, the class map for semantic datasets. ``part_sem_seg`` is carried along.
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        sem_seg: Optional[np.ndarray] = None,
        part_sem_seg: Optional[np.ndarray] = None,
    ) -> None:
        _check_image(image)
        for name, seg in (("sem_seg", sem_seg), ("part_sem_seg", part_sem_seg)):
            if seg is not None and tuple(seg.shape) != tuple(image.shape[:2]):
                raise ValueError(
                    f"AugInput: {name} has shape {tuple(seg.shape)} but the image is {tuple(image.shape[:2])}"
                )
        self.image = image
        self.sem_seg = sem_seg
        self.part_sem_seg = part_sem_seg

    def transform(self, tfm: Transform) -> None:
        """Apply ``tfm`` in place to the image (``apply_image``) and the maps (``apply_segmentation``)."""
        self.image = tfm.apply_image(self.image)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)
        if self.part_sem_seg is not None:
            self.part_sem_seg = tfm.apply_segmentation(self.part_sem_seg)

    def apply_augmentations(
        self, augmentations: Sequence[Union["Augmentation", Transform]], rng: AugRandom
    ) -> TransformList:
        return apply_augmentations(augmentations, self, rng)


class Augmentation(abc.ABC):
    """A random policy: ``get_transform(aug_input, rng)`` returns a deterministic ``Transform``."""

    @abc.abstractmethod
    def get_transform(self, aug_input: AugInput, rng: AugRandom) -> Transform:
        """The deterministic transform this policy draws for ``aug_input``."""

    def __call__(self, aug_input: AugInput, rng: AugRandom) -> Transform:
        tfm = self.get_transform(aug_input, rng)
        if not isinstance(tfm, (Transform, TransformList)):
            raise TypeError(f"{type(self).__name__}.get_transform returned {type(tfm).__name__}, not a Transform")
        aug_input.transform(tfm)
        return tfm

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def apply_augmentations(
    augmentations: Sequence[Union[Augmentation, Transform]], aug_input: AugInput, rng: AugRandom
) -> TransformList:
    """Run policies (and plain transforms) in order on ``aug_input``; return what was applied."""
    applied: list[Transform] = []
    for aug in augmentations:
        if isinstance(aug, Augmentation):
            applied.append(aug(aug_input, rng))
        elif isinstance(aug, Transform):
            aug_input.transform(aug)
            applied.append(aug)
        else:
            raise TypeError(f"Expected an Augmentation or a Transform, got {type(aug).__name__}: {aug!r}")
    return TransformList(applied)


# ----------------------------------------------------------------------------------------------
# resize
# ----------------------------------------------------------------------------------------------
_PIL_TO_TORCH_MODE = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}


class ResizeTransform(Transform):
    """Resize to ``(new_h, new_w)``: PIL for uint8 images, torch legacy nearest for label maps."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int = Image.BILINEAR) -> None:
        super().__init__()
        self._set_attributes(dict(h=int(h), w=int(w), new_h=int(new_h), new_w=int(new_w), interp=interp))

    def _check(self, img: np.ndarray) -> None:
        if tuple(img.shape[:2]) != (self.h, self.w):
            raise ValueError(f"ResizeTransform built for {(self.h, self.w)} got an array of shape {img.shape}")

    def apply_image(self, img: np.ndarray, interp: Optional[int] = None) -> np.ndarray:
        self._check(img)
        method = self.interp if interp is None else interp
        if img.dtype == np.uint8:
            single = img.ndim == 3 and img.shape[2] == 1
            pil = Image.fromarray(np.ascontiguousarray(img[:, :, 0] if single else img))
            out = np.asarray(pil.resize((self.new_w, self.new_h), method))
            return out[:, :, None] if single else out
        # float images (PIL only handles uint8 here): torch interpolation, as detectron2 does
        mode = _PIL_TO_TORCH_MODE[method]
        t = torch.from_numpy(np.ascontiguousarray(img))
        shape = list(t.shape)
        t4 = t.reshape(shape[:2] + [-1]).permute(2, 0, 1)[None]  # 1 x C x H x W
        kwargs: dict[str, Any] = {} if mode == "nearest" else {"align_corners": False}
        t4 = F.interpolate(t4, size=(self.new_h, self.new_w), mode=mode, **kwargs)
        shape[:2] = [self.new_h, self.new_w]
        return t4[0].permute(1, 2, 0).reshape(shape).numpy()

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Torch legacy nearest on a float64 copy; the result keeps the input dtype."""
        self._check(segmentation)
        src = torch.from_numpy(np.ascontiguousarray(segmentation, dtype=np.float64))
        out = F.interpolate(src[None, None], size=(self.new_h, self.new_w), mode="nearest")[0, 0].numpy()
        return out.astype(segmentation.dtype, copy=False)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def inverse(self) -> Transform:
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class ResizeShortestEdge(Augmentation):
    """Scale the short side to a sampled length, capping the long side at ``max_size``."""

    def __init__(
        self,
        short_edge_length: Union[int, Sequence[int]],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
        interp: int = Image.BILINEAR,
    ) -> None:
        if sample_style not in ("range", "choice"):
            raise ValueError(f"ResizeShortestEdge: sample_style must be 'range' or 'choice', got {sample_style!r}")
        if isinstance(short_edge_length, (int, np.integer)):
            short_edge_length = (int(short_edge_length), int(short_edge_length))
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(
                f"ResizeShortestEdge: 'range' sampling needs (min, max), got {short_edge_length}"
            )
        if not short_edge_length:
            raise ValueError("ResizeShortestEdge: short_edge_length is empty")
        self.short_edge_length = short_edge_length
        self.max_size = int(max_size)
        self.sample_style = sample_style
        self.interp = interp

    @staticmethod
    def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
        """(new_h, new_w) with detectron2's arithmetic (float scale, ``int(x + 0.5)`` rounding)."""
        size = float(short_edge_length)
        scale = size / min(oldh, oldw)
        if oldh < oldw:
            newh, neww = size, scale * oldw
        else:
            newh, neww = scale * oldh, size
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return int(newh + 0.5), int(neww + 0.5)

    def get_transform(self, aug_input: AugInput, rng: AugRandom) -> Transform:
        h, w = aug_input.image.shape[:2]
        if self.sample_style == "range":
            size = int(rng.np.integers(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(rng.np.choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        newh, neww = self.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, newh, neww, self.interp)


# ----------------------------------------------------------------------------------------------
# crop / flip
# ----------------------------------------------------------------------------------------------
class RandomCrop(Augmentation):
    """detectron2 ``RandomCrop`` (types: relative, relative_range, absolute, absolute_range)."""

    TYPES = ("relative_range", "relative", "absolute", "absolute_range")

    def __init__(self, crop_type: str, crop_size: Sequence[float]) -> None:
        if crop_type not in self.TYPES:
            raise ValueError(f"RandomCrop: crop_type must be one of {self.TYPES}, got {crop_type!r}")
        if len(crop_size) != 2:
            raise ValueError(f"RandomCrop: crop_size must have 2 entries, got {crop_size!r}")
        self.crop_type = crop_type
        self.crop_size = tuple(crop_size)

    def get_crop_size(self, image_size: tuple[int, int], rng: AugRandom) -> tuple[int, int]:
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            size = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = size + rng.np.random(2) * (1 - size)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(int(self.crop_size[0]), h), min(int(self.crop_size[1]), w)
        lo, hi = int(self.crop_size[0]), int(self.crop_size[1])
        if lo > hi:
            raise ValueError(f"RandomCrop: absolute_range needs min <= max, got {self.crop_size}")
        ch = int(rng.np.integers(min(h, lo), min(h, hi) + 1))
        cw = int(rng.np.integers(min(w, lo), min(w, hi) + 1))
        return ch, cw

    def get_transform(self, aug_input: AugInput, rng: AugRandom) -> Transform:
        h, w = aug_input.image.shape[:2]
        ch, cw = self.get_crop_size((h, w), rng)
        y0 = int(rng.np.integers(h - ch + 1))
        x0 = int(rng.np.integers(w - cw + 1))
        return CropTransform(x0, y0, cw, ch)


class RandomCrop_CategoryAreaConstraint(Augmentation):  # noqa: N801 (official name)
    """Random crop in which no single category covers more than ``single_category_max_area``.

    Looks at ``aug_input.sem_seg``; with ``single_category_max_area >= 1`` it is a plain ``RandomCrop``.
    After 10 unsuccessful tries the last candidate is used (detectron2 behaviour).
    """

    def __init__(
        self,
        crop_type: str,
        crop_size: Sequence[float],
        single_category_max_area: float = 1.0,
        ignored_category: Optional[int] = None,
    ) -> None:
        self.crop_aug = RandomCrop(crop_type, crop_size)
        self.crop_type = crop_type
        self.crop_size = tuple(crop_size)
        self.single_category_max_area = float(single_category_max_area)
        self.ignored_category = ignored_category

    def get_transform(self, aug_input: AugInput, rng: AugRandom) -> Transform:
        if self.single_category_max_area >= 1.0:
            return self.crop_aug.get_transform(aug_input, rng)
        sem_seg = aug_input.sem_seg
        if sem_seg is None:
            raise ValueError("RandomCrop_CategoryAreaConstraint with max area < 1 needs aug_input.sem_seg")
        h, w = sem_seg.shape
        for _ in range(10):
            ch, cw = self.crop_aug.get_crop_size((h, w), rng)
            y0 = int(rng.np.integers(h - ch + 1))
            x0 = int(rng.np.integers(w - cw + 1))
            labels, cnt = np.unique(sem_seg[y0 : y0 + ch, x0 : x0 + cw], return_counts=True)
            if self.ignored_category is not None:
                cnt = cnt[labels != self.ignored_category]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * self.single_category_max_area:
                break
        return CropTransform(x0, y0, cw, ch)


class RandomFlip(Augmentation):
    """Flip with probability ``prob`` (horizontal by default)."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False) -> None:
        if horizontal == vertical:
            raise ValueError("RandomFlip: choose exactly one of horizontal / vertical")
        self.prob = float(prob)
        self.horizontal = horizontal
        self.vertical = vertical

    def get_transform(self, aug_input: AugInput, rng: AugRandom) -> Transform:
        h, w = aug_input.image.shape[:2]
        if rng.np.random() < self.prob:
            return HFlipTransform(w) if self.horizontal else VFlipTransform(h)
        return NoOpTransform()


# ----------------------------------------------------------------------------------------------
# SSD colour distortion
# ----------------------------------------------------------------------------------------------
def _affine_uint8(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(img * alpha + beta, 0, 255)`` in float32, truncated back to uint8 (official arithmetic)."""
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


class ColorAugSSDTransform(Transform):
    """A *drawn* SSD colour distortion: every parameter is fixed; ``None`` means "step skipped".

    Works on uint8 HxWx3 images; label maps and coordinates are untouched.
    """

    def __init__(
        self,
        img_format: str = "RGB",
        *,
        brightness_beta: Optional[float] = None,
        contrast_alpha: Optional[float] = None,
        contrast_first: bool = True,
        saturation_alpha: Optional[float] = None,
        hue_shift: Optional[int] = None,
    ) -> None:
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSDTransform: img_format must be 'RGB' or 'BGR', got {img_format!r}")
        self._set_attributes(
            dict(
                img_format=img_format,
                brightness_beta=brightness_beta,
                contrast_alpha=contrast_alpha,
                contrast_first=bool(contrast_first),
                saturation_alpha=saturation_alpha,
                hue_shift=hue_shift,
            )
        )

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        return img if self.contrast_alpha is None else _affine_uint8(img, alpha=self.contrast_alpha)

    def _saturation(self, img: np.ndarray) -> np.ndarray:
        if self.saturation_alpha is None:
            return img
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _affine_uint8(hsv[:, :, 1], alpha=self.saturation_alpha)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def _hue(self, img: np.ndarray) -> np.ndarray:
        if self.hue_shift is None:
            return img
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + int(self.hue_shift)) % 180  # OpenCV hue is 0..179
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"ColorAugSSDTransform needs a uint8 HxWx3 image, got {img.dtype} {img.shape}")
        bgr = img[:, :, ::-1] if self.img_format == "RGB" else img  # the distortion is defined on BGR
        bgr = np.ascontiguousarray(bgr)
        if self.brightness_beta is not None:
            bgr = _affine_uint8(bgr, beta=self.brightness_beta)
        if self.contrast_first:
            bgr = self._hue(self._saturation(self._contrast(bgr)))
        else:
            bgr = self._contrast(self._hue(self._saturation(bgr)))
        out = bgr[:, :, ::-1] if self.img_format == "RGB" else bgr
        return np.ascontiguousarray(out)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def inverse(self) -> Transform:
        raise NotImplementedError("ColorAugSSDTransform is not invertible")


class ColorAugSSD(Augmentation):
    """Draws a ``ColorAugSSDTransform`` from ``rng.py``, in the official draw order.

    Order: brightness (coin, then offset), contrast-first coin, then for each of the three remaining
    steps in execution order a coin and, if it lands 1, the parameter. Because the official code's draws
    never depend on pixel values, drawing them up front yields the same numbers it would for the same
    Python ``random`` state.
    """

    def __init__(
        self,
        img_format: str = "RGB",
        brightness_delta: float = 32,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ) -> None:
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSD: img_format must be 'RGB' or 'BGR', got {img_format!r}")
        self.img_format = img_format
        self.brightness_delta = brightness_delta
        self.contrast_low = contrast_low
        self.contrast_high = contrast_high
        self.saturation_low = saturation_low
        self.saturation_high = saturation_high
        self.hue_delta = int(hue_delta)

    def sample(self, r: random.Random) -> ColorAugSSDTransform:
        brightness = r.uniform(-self.brightness_delta, self.brightness_delta) if r.randrange(2) else None
        contrast_first = bool(r.randrange(2))
        params: dict[str, Any] = {}

        def draw(step: str) -> None:
            if not r.randrange(2):
                params[step] = None
            elif step == "contrast":
                params[step] = r.uniform(self.contrast_low, self.contrast_high)
            elif step == "saturation":
                params[step] = r.uniform(self.saturation_low, self.saturation_high)
            else:
                params[step] = r.randint(-self.hue_delta, self.hue_delta)

        for step in (("contrast", "saturation", "hue") if contrast_first else ("saturation", "hue", "contrast")):
            draw(step)
        return ColorAugSSDTransform(
            self.img_format,
            brightness_beta=brightness,
            contrast_alpha=params["contrast"],
            contrast_first=contrast_first,
            saturation_alpha=params["saturation"],
            hue_shift=params["hue"],
        )

    def get_transform(self, aug_input: AugInput, rng: AugRandom) -> Transform:
        return self.sample(rng.py)
