"""The head's 68 face landmarks (the iBUG 300-W / dlib layout) projected into the image.

The official code draws the OpenPose ControlNet's face dots from DECA's ``landmarks2d``: FLAME's
68 landmark points projected by the same orthographic camera as the hint, in the image frame.
Here every head prior gives its 68 points in its own model, and :func:`project` poses them with
the shared :class:`HeadParams` conventions (rotation, then ``scale * X + (tx, ty)``), so the dots
land where the rendered hint puts the face:

- built-in prior: its vertices are mediapipe's face-mesh points, so the 68 landmarks are the
  mesh points at :data:`MEDIAPIPE_68` (the usual correspondence between mediapipe's mesh and the
  68-point layout: jaw line, brows, nose bridge and base, eye corners and lids, lips).
- DECA/FLAME: points on FLAME's surface given by DECA's ``landmark_embedding.npy`` (a triangle and
  barycentric weights per landmark; DECA's data/ folder), read with :func:`load_flame_landmarks`.
  The ``full_lmk`` set is used: DECA's ``landmarks2d`` picks the 17 jaw-line points from a
  yaw-dependent table instead (the visible contour of a turned head), so on strongly turned heads
  the jaw-line dots here follow the 3D jaw rather than the silhouette.
"""

from __future__ import annotations

import numpy as np
import torch

from caphuman.errors import CapHumanError
from caphuman.head.params import HeadParams, rotation_matrix

FLAME_LANDMARK_FILE = "landmark_embedding.npy"

NUM_FACE_LANDMARKS = 68

# 68-point layout index -> mediapipe face-mesh vertex.
MEDIAPIPE_68: tuple[int, ...] = (
    # jaw line, from the subject's right ear (image left) to the left
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    # right brow, left brow
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    # nose bridge, nose base
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye, left eye (outer corner, upper lid, inner corner, lower lid)
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips, inner lips
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)


def load_flame_landmarks(path) -> tuple[np.ndarray, np.ndarray]:
    """DECA's ``landmark_embedding.npy`` -> (68,) FLAME triangle indices and (68, 3) barycentric weights.

    The file is a numpy object array holding a pickled dict; it is unpickled with the FLAME
    loader's allow-list (numpy arrays only), never with ``allow_pickle=True``.

    Raises:
        CapHumanError: unreadable file, a disallowed class, or missing/mis-shaped entries.
    """
    import pickle

    from caphuman.head.assets import RestrictedFlameUnpickler

    try:
        with open(path, "rb") as stream:
            major, _ = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(stream)
            if dtype != np.dtype(object):
                raise CapHumanError(f"'{path}' holds a {dtype} array, not DECA's landmark embedding (a pickled dict).")
            loaded = RestrictedFlameUnpickler(stream, encoding="latin1").load()
    except CapHumanError:
        raise
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, TypeError, AttributeError) as error:
        raise CapHumanError(f"'{path}' could not be read as DECA's landmark embedding ({error}).") from None
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
        loaded = loaded.item()
    if not isinstance(loaded, dict) or "full_lmk_faces_idx" not in loaded or "full_lmk_bary_coords" not in loaded:
        raise CapHumanError(f"'{path}' has no full_lmk_faces_idx / full_lmk_bary_coords; it is not DECA's landmark_embedding.npy.")
    faces = np.asarray(loaded["full_lmk_faces_idx"]).reshape(-1).astype(np.int64)
    weights = np.asarray(loaded["full_lmk_bary_coords"], dtype=np.float32).reshape(-1, 3)
    if faces.shape != (NUM_FACE_LANDMARKS,) or weights.shape != (NUM_FACE_LANDMARKS, 3):
        raise CapHumanError(f"'{path}' has {faces.shape[0]} landmarks, expected {NUM_FACE_LANDMARKS}.")
    return faces, weights


def project(points: torch.Tensor, params: HeadParams) -> torch.Tensor:
    """(B, N, 3) points in the head model's frame -> (B, N, 2) normalised camera coordinates
    (x right, y up, in [-1, 1] across the image), with the rotation and orthographic camera of
    ``params`` (see caphuman/head/params.py)."""
    dtype = torch.float32
    rotated = points.to(dtype) @ rotation_matrix(params.rotation.to(points.device, dtype)).transpose(1, 2)
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
    "FLAME_LANDMARK_FILE",
    "MEDIAPIPE_68",
    "NUM_FACE_LANDMARKS",
    "face_points",
    "load_flame_landmarks",
    "project",
    "to_image_fraction",
]
