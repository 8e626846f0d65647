"""Reading a user's images and masks: paths, PIL images or arrays -> upright uint8 RGB arrays."""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = ["ImageInput", "MaskInput", "load_image", "load_mask"]

ImageInput = Union[str, os.PathLike, np.ndarray, Any]  # Any: PIL.Image.Image
MaskInput = Union[str, os.PathLike, np.ndarray, torch.Tensor, Any]


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def _reason(err: BaseException, path: str) -> str:
    """An exception as a short phrase without repeating the path (PIL messages often quote it)."""
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    text = text.replace(repr(path), "").replace(path, "").strip(" :")
    return text or type(err).__name__


def load_image(image: ImageInput) -> tuple[np.ndarray, Optional[str]]:
    """An (H, W, 3) uint8 RGB array and the source path (if any).

    Paths are read with Pillow and turned upright by their EXIF orientation (what a photo viewer
    shows). PIL images are converted to RGB as given. Arrays must be uint8 (H, W), (H, W, 3) RGB
    or (H, W, 4) RGBA (alpha dropped).
    """
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        path = str(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                array = np.array(im.convert("RGB"))
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as err:
            # OSError covers PIL's UnidentifiedImageError ("cannot identify image file") and truncated files
            raise ValueError(f"Cannot read {path} as an image: {_reason(err, path)}") from err
        if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"Cannot read {path} as an image: empty image of shape {array.shape}")
        return np.ascontiguousarray(array), path
    if _is_pil(image):
        return np.array(image.convert("RGB")), getattr(image, "filename", None) or None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"Image arrays must be uint8 RGB (H, W, 3); got dtype {image.dtype} — convert with "
                f"(x * 255).clip(0, 255).astype(np.uint8) if your values are in [0, 1]"
            )
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Image arrays must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey; got {image.shape}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"Empty image of shape {image.shape}")
        return np.ascontiguousarray(image), None
    raise TypeError(
        f"Unsupported image input {type(image).__name__}; expected a file path, a PIL image or a uint8 "
        f"numpy array (H, W, 3) in RGB order"
    )


def load_mask(mask: MaskInput, size: tuple[int, int], what: str = "object_mask") -> np.ndarray:
    """An (H, W) bool mask of ``size`` from a bool/0-1 array, a tensor, a PIL image or a PNG path (non-zero = inside)."""
    from PIL import Image

    source = ""
    if isinstance(mask, (str, os.PathLike)):
        source = f" ({mask})"
        if not os.path.isfile(str(mask)):
            raise FileNotFoundError(f"{what} file not found: {mask}")
        try:
            with Image.open(str(mask)) as im:
                array = np.asarray(im.convert("L"))
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"Cannot read {what} {mask} as an image: {_reason(err, str(mask))}") from err
    elif _is_pil(mask):
        array = np.asarray(mask.convert("L"))
    elif isinstance(mask, torch.Tensor):
        array = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        array = mask
    else:
        raise TypeError(f"Unsupported {what} {type(mask).__name__}; expected an (H, W) bool array, a tensor or a PNG path")
    if array.ndim != 2:
        raise ValueError(f"{what}{source} must be (H, W); got shape {array.shape}")
    if tuple(array.shape) != tuple(size):
        raise ValueError(
            f"{what}{source} has shape {tuple(array.shape)} but the image is {tuple(size)} (H, W); "
            f"the mask must have the image's size"
        )
    return array != 0
