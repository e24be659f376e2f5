"""The head's 68 face landmarks (the iBUG 300-W / dlib layout) projected into the image.

The official code draws the OpenPose ControlNet's face dots from DECA's ``landmarks2d``: FLAME's
68 landmark points projected by the same orthographic camera as the hint, in the image frame.
Here every head prior gives its 68 points in its own model (a ``landmarks68(params)`` method), and
:func:`project` poses them with the shared :class:`HeadParams` conventions (rotation, then
``scale * X + (tx, ty)``), so the dots land where the rendered hint puts the face:

- built-in prior: its vertices are mediapipe's face-mesh points, so the 68 landmarks are the
  mesh points at :data:`caphuman.head.builtin.builtin_prior.MEDIAPIPE_68` (the usual
  correspondence between mediapipe's mesh and the 68-point layout: jaw line, brows, nose bridge
  and base, eye corners and lids, lips).
- DECA/FLAME: DECA's ``landmarks2d``, points on FLAME's surface given by DECA's landmark
  embedding (:mod:`caphuman.head.deca.flame_landmarks`).
"""

from __future__ import annotations

import numpy as np
import torch

from caphuman.head.params import HeadParams
from caphuman.head.rotations import yaw_pitch_roll_to_matrix

NUM_FACE_LANDMARKS = 68


def project(points: torch.Tensor, params: HeadParams) -> torch.Tensor:
    """(B, N, 3) points in the head model's frame -> (B, N, 2) normalised camera coordinates
    (x right, y up, in [-1, 1] across the image), with the rotation and orthographic camera of
    ``params`` (see caphuman/head/params.py)."""
    dtype = torch.float32
    rotated = points.to(dtype) @ yaw_pitch_roll_to_matrix(params.rotation.to(points.device, dtype)).transpose(1, 2)
    camera = params.camera.to(points.device, dtype)
    return rotated[..., :2] * camera[:, 0, None, None] + camera[:, None, 1:3]


def to_image_fraction(points: torch.Tensor | np.ndarray) -> np.ndarray:
    """Normalised camera coordinates (x right, y up, [-1, 1]) -> image fractions (column / width,
    row / height; y down, [0, 1]), the form caphuman.body.draw_openpose_map takes."""
    points = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    return np.stack([(points[..., 0] + 1.0) / 2.0, (1.0 - points[..., 1]) / 2.0], axis=-1).astype(np.float32)


def face_points(prior, params: HeadParams, index: int = 0) -> np.ndarray:
    """(68, 2) face landmarks of head ``index`` as image fractions (x right, y down, [0, 1]) of the
    square frame the hint is rendered in.

    Raises:
        NotImplementedError: the prior has no 68-landmark definition.
    """
    landmarks = getattr(prior, "landmarks68", None)
    if landmarks is None:
        raise NotImplementedError(f"The '{prior.name}' head prior has no 68 face landmarks.")
    return to_image_fraction(landmarks(params)[index])


__all__ = [
    "NUM_FACE_LANDMARKS",
    "face_points",
    "project",
    "to_image_fraction",
]
