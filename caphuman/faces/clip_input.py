"""The reference image CLIP sees: non-face pixels painted white, then CLIP's 224 px framing.

Two framings (``identity.clip_crop``):
- ``official`` (the published inference script): the WHOLE photo, parsed at its native size,
  non-face classes painted white, then CLIP's own preprocessing: the shortest side resized to
  224 with PIL's bicubic filter (the long side to int(224 * long / short)), and the centre
  224 x 224 cut out (top = (h - 224) // 2, left = (w - 224) // 2).
- ``aligned``: an eye/mouth-aligned square crop of the face at 224 px
  (:func:`caphuman.faces.alignment.clip_face_crop`), the framing of pre-aligned training photos.

Both return the 224 x 224 uint8 image the CLIP processor then only rescales and normalises, so
the same pixels are saved by ``caphuman inspect``, stored by preprocessing and used at sampling.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_INPUT_SIZE = 224
WHITE = 255


def paint_non_face_white(image: np.ndarray, face_region: np.ndarray) -> np.ndarray:
    """A copy of ``image`` with every pixel outside ``face_region`` set to (255, 255, 255).

    Args:
        image: (H, W, 3) uint8 RGB.
        face_region: (H, W) bool, True on the face classes.
    """
    if face_region.shape != image.shape[:2]:
        raise ValueError(f"face region {face_region.shape} does not match image {image.shape[:2]}")
    painted = image.copy()
    painted[~face_region.astype(bool)] = WHITE
    return painted


def shortest_side_resize_and_centre_crop(image: np.ndarray, size: int = CLIP_INPUT_SIZE) -> np.ndarray:
    """CLIP's published framing of an (H, W, 3) uint8 image -> (size, size, 3) uint8.

    The shortest side becomes ``size`` (PIL bicubic; no resize when it already is), the long side
    int(size * long / short); then the centre square is cut with floor offsets.
    """
    height, width = image.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    pil = Image.fromarray(image)
    if short != size:
        new_long = int(size * long / short)
        new_size = (size, new_long) if width <= height else (new_long, size)  # PIL takes (w, h)
        pil = pil.resize(new_size, Image.BICUBIC)
    new_width, new_height = pil.size
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()


def official_clip_input(image: np.ndarray, face_region: np.ndarray, size: int = CLIP_INPUT_SIZE) -> np.ndarray:
    """The published script's CLIP input: whole photo, non-face white, shortest side + centre crop."""
    return shortest_side_resize_and_centre_crop(paint_non_face_white(image, face_region), size)
