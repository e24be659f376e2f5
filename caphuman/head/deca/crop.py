"""DECA's test-time face crop, as CapHuman runs it, and the crop camera in whole-image terms.

The photo is first resized to a 512 x 512 square (CapHuman's TestData(size=512)); the face box
is made square with side ``int(box_size * 1.25)`` and resampled bilinearly to 224 x 224 RGB in
[0, 1] (no mean/std normalisation). Box size and centre follow DECA's two rules: for a
68-landmark box, size = (w + h) / 2 * 1.1 around the box centre; for a detector box, size =
(w + h) / 2 with the centre moved down by 0.12 * size. Our detector gives mediapipe's 478-point
mesh, so the 68-landmark extent (eyebrows to chin, cheek to cheek) is taken from it.

DECA projects x_crop = s (X + tx), y_crop = s (Y + ty) in the crop's [-1, 1] square (y up before
DECA flips it for its rasteriser), so the conversion to whole-image normalised coordinates is only
a scale and shift (see :func:`camera_from_deca`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.transform import AffineTransform, warp

from caphuman.errors import InputImageError

CROP_SIZE = 224
CROP_SCALE = 1.25
# CapHuman resizes every photo to this square before DECA sees it (TestData(size=512)).
WORKING_SIZE = 512
# DECA's two box rules (datasets.TestData.bbox2point).
LANDMARK_BOX_ENLARGE = 1.1
DETECTOR_BOX_SHIFT = 0.12

# mediapipe face-mesh points of both eyebrows (FACEMESH_LEFT/RIGHT_EYEBROW): the top of a
# 68-landmark box, which DECA's FAN landmarks start at.
_EYEBROW_POINTS = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
_MESH_POINTS = 478


@dataclass(frozen=True)
class CropWindow:
    """DECA's square crop in the working image: pixels (left, top) .. (left + size, top + size).

    DECA maps the window's first and last pixel to crop pixels 0 and 223 and renders its 224-wide
    [-1, 1] square over 224 pixels, so one crop unit spans ``size * 224 / 223`` image pixels.
    """

    left: float
    top: float
    size: int
    image_size: int

    @property
    def span(self) -> float:
        """Image pixels covered by the crop's [-1, 1] range."""
        return self.size * CROP_SIZE / (CROP_SIZE - 1)


def crop_window_from_face(box: tuple[float, float, float, float], landmarks: np.ndarray | None, image_size: int) -> CropWindow:
    """DECA's crop window for one face in a square working image of side ``image_size``.

    With mediapipe's 478 mesh points the 68-landmark rule is used (eyebrows to chin, cheek to
    cheek, x1.1); otherwise the detector-box rule (centre moved down by 0.12 of the size).
    """
    if landmarks is not None and landmarks.shape[0] == _MESH_POINTS:
        points = landmarks[:, :2].astype(np.float64)
        left, right = points[:, 0].min(), points[:, 0].max()
        top, bottom = points[list(_EYEBROW_POINTS), 1].min(), points[:, 1].max()
        old_size = (right - left + bottom - top) / 2.0 * LANDMARK_BOX_ENLARGE
        center_x, center_y = (left + right) / 2.0, (top + bottom) / 2.0
    else:
        left, top, right, bottom = box
        old_size = (right - left + bottom - top) / 2.0
        center_x, center_y = (left + right) / 2.0, (top + bottom) / 2.0 + old_size * DETECTOR_BOX_SHIFT
    size = int(old_size * CROP_SCALE)
    if size < 2:
        raise InputImageError("The detected face is too small to crop for DECA.")
    return CropWindow(left=center_x - size / 2.0, top=center_y - size / 2.0, size=size, image_size=image_size)


def crop_face(image: np.ndarray, window: CropWindow) -> np.ndarray:
    """Resample DECA's 224 x 224 crop (bilinear, black outside the photo).

    Args:
        image: (S, S, 3) float RGB in [0, 1], the working image.
    Returns:
        (224, 224, 3) float32 RGB in [0, 1].
    """
    step = window.size / (CROP_SIZE - 1)
    # Output pixel (col, row) -> working-image point (left + col * step, top + row * step).
    crop_to_image = AffineTransform(matrix=np.array([[step, 0.0, window.left], [0.0, step, window.top], [0.0, 0.0, 1.0]]))
    return warp(image, crop_to_image, output_shape=(CROP_SIZE, CROP_SIZE), order=1, mode="constant", cval=0.0).astype(np.float32)


def camera_from_deca(cam: torch.Tensor, window: CropWindow) -> torch.Tensor:
    """DECA's crop camera (s, tx, ty) -> our (scale, tx, ty) in whole-image normalised coordinates.

    DECA: crop coordinate c = s (X + t) in [-1, 1] (y up); crop pixel offset (c + 1) / 2 * span
    from the window's corner; our x = 2 u / S - 1 and y = 1 - 2 v / S. Hence
    scale = s * span / S, tx = (2 left + span) / S - 1 + s tx_deca span / S and
    ty = 1 - (2 top + span) / S + s ty_deca span / S.
    """
    size = float(window.image_size)
    ratio = window.span / size
    s, tx, ty = cam.unbind(-1)
    return torch.stack(
        [
            s * ratio,
            (2.0 * window.left + window.span) / size - 1.0 + s * tx * ratio,
            1.0 - (2.0 * window.top + window.span) / size + s * ty * ratio,
        ],
        dim=-1,
    )


__all__ = [
    "CROP_SIZE",
    "WORKING_SIZE",
    "CropWindow",
    "camera_from_deca",
    "crop_face",
    "crop_window_from_face",
]
