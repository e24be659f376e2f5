"""Reading user photos into the one array layout the face code expects.

Every photo that enters the package (reference face, pose photo, dataset image) goes through
:func:`load_image`, so EXIF rotation, palette/grey/alpha modes and unreadable files are handled
once, and users see one clear sentence instead of a PIL traceback.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from caphuman.errors import InputImageError

logger = logging.getLogger(__name__)

# Decoders raise a zoo of exception types on damaged files (OSError for truncation, SyntaxError
# and ValueError from PNG chunk parsing, EOFError from some TIFF/GIF paths, zlib.error from
# deflate streams); all of them mean "this file is not a readable image".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error)

# Transparent pixels carry arbitrary colours; compositing over white matches how CapHuman paints
# everything that is not face (white) before CLIP sees it.
_ALPHA_BACKGROUND = (255, 255, 255)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as an RGB uint8 array.

    EXIF orientation is applied (phone photos are stored sideways with a rotation tag), grey,
    16-bit, palette and CMYK images are converted, and transparency is composited over white.

    Args:
        path: image file path (any format Pillow reads: JPEG, PNG, WebP, BMP, TIFF, ...).
    Returns:
        (H, W, 3) uint8 RGB array, values 0..255, C-contiguous.
    Raises:
        InputImageError: the file is missing, is not an image, or is truncated/corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"Input image '{path}' does not exist.")
    if not path.is_file():
        raise InputImageError(f"Input image '{path}' is not a file.")
    try:
        with Image.open(path) as opened:
            # load() forces the full decode inside the try: Image.open only reads the header, so a
            # truncated body would otherwise fail later, far from the file name.
            opened.load()
            image = ImageOps.exif_transpose(opened)
            rgb = _to_rgb_array(image)
    except UnidentifiedImageError as error:
        raise InputImageError(f"Input image '{path}' is not an image file that can be read.") from error
    except Image.DecompressionBombError as error:
        raise InputImageError(f"Input image '{path}' is too large to decode safely ({error}).") from error
    except _DECODE_ERRORS as error:
        raise InputImageError(f"Input image '{path}' is truncated or corrupt ({error}).") from error
    logger.debug("Loaded %s as %dx%d RGB.", path, rgb.shape[1], rgb.shape[0])
    return rgb


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to a (H, W, 3) uint8 RGB array."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert("RGB") clips 16/32-bit grey at 255 (white photo); rescale instead.
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        grey8 = np.clip(np.round(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    if image.mode == "F":
        grey8 = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
