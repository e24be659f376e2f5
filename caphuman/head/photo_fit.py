"""A photo -> the square frame the head prior works in (``head.photo_fit``).

The head prior reconstructs and renders in a square, normalised image frame, and that frame
becomes the generated image's frame. A non-square photo reaches it one of two ways:

- "squash" (the published script): resized to 512 x 512 whatever its shape, with scikit-image's
  anti-aliased resize, exactly as the official DECA loader (``TestData(size=512)``) does
  ``(resize(im, (512, 512), anti_aliasing=True) * 255).astype(uint8)``. A 4:3 photo's face is
  stretched, and the head prior fits that stretched face.
- "pad": padded with its edge pixels to a centred square first; proportions are kept, and the
  padded border is part of the generated image's frame.

A square photo is unaffected by "pad" and only resized by "squash".
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

# CapHuman's TestData(size=512): every photo is resized to this square before DECA sees it.
SQUASH_SIZE = 512


def squash_to_square(image: np.ndarray, size: int = SQUASH_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, aspect ratio NOT kept (the official resize)."""
    if image.shape[:2] == (size, size):
        return image
    # skimage rescales uint8 to [0, 1] floats; the official code truncates (astype) after * 255.
    return (resize(image, (size, size), anti_aliasing=True) * 255.0).astype(np.uint8)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad with edge pixels to a centred square, so normalised image coordinates are isotropic."""
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return np.pad(image, ((top, side - height - top), (left, side - width - left), (0, 0)), mode="edge")


def fit_photo(image: np.ndarray, photo_fit: str) -> np.ndarray:
    """The head prior's square input for ``photo_fit`` "squash" or "pad"."""
    if photo_fit == "squash":
        return squash_to_square(image)
    if photo_fit == "pad":
        return pad_to_square(image)
    raise ValueError(f"photo_fit must be 'squash' or 'pad', got '{photo_fit}'.")
