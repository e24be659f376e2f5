"""The head's 68 face landmarks (the iBUG 300-W / dlib layout) projected into the image.

The official code draws the OpenPose ControlNet's face dots from DECA's ``landmarks2d``: FLAME's
68 landmark points projected by the same orthographic camera as the hint, in the image frame.
Here every head prior gives its 68 points in its own model, and :func:`project` poses them with
the shared :class:`HeadParams` conventions (rotation, then ``scale * X + (tx, ty)``), so the dots
land where the rendered hint puts the face:

- built-in prior: its vertices are mediapipe's face-mesh points, so the 68 landmarks are the
  mesh points at :data:`MEDIAPIPE_68` (the usual correspondence between mediapipe's mesh and the
  68-point layout: jaw line, brows, nose bridge and base, eye corners and lids, lips).
- DECA/FLAME: DECA's ``landmarks2d``, i.e. points on FLAME's surface given by DECA's
  ``landmark_embedding.npy`` (a triangle and barycentric weights per landmark; DECA's data/
  folder), read with :func:`load_flame_landmarks`: the 17 jaw-line points come from a
  yaw-dependent table (the visible contour of a turned head, :func:`contour_row`), the other 51
  are fixed.
"""

from __future__ import annotations

import numpy as np
import torch

import io
import math
from dataclasses import dataclass

from caphuman.errors import CapHumanError
from caphuman.head.params import HeadParams
from caphuman.head.rotations import yaw_pitch_roll_to_matrix

FLAME_LANDMARK_FILE = "landmark_embedding.npy"
NUM_CONTOUR_LANDMARKS = 17
# DECA's contour table has a row per whole degree of yaw: 0..39 for one side, 40..78 for the other.
MAX_CONTOUR_DEGREES = 39

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


@dataclass(frozen=True)
class FlameLandmarks:
    """DECA's landmark embedding on FLAME: a triangle and barycentric weights per landmark.

    Attributes:
        static_faces: (51,) triangles of landmarks 17..67 (brows, nose, eyes, mouth).
        static_weights: (51, 3) their barycentric weights.
        contour_faces: (79, 17) triangles of the jaw-line landmarks 0..16, per yaw row.
        contour_weights: (79, 17, 3) their barycentric weights.
    """

    static_faces: torch.Tensor
    static_weights: torch.Tensor
    contour_faces: torch.Tensor
    contour_weights: torch.Tensor

    def to(self, device) -> "FlameLandmarks":
        return FlameLandmarks(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def _torch_storage_from_bytes(data: bytes):
    """What ``torch.storage._load_from_bytes`` does for a pickled tensor's storage, but with
    ``weights_only=True``, so the embedded torch file cannot run code either."""
    return torch.load(io.BytesIO(data), weights_only=True)


def load_flame_landmarks(path) -> FlameLandmarks:
    """Read DECA's ``landmark_embedding.npy``.

    The file is a numpy object array holding a pickled dict of numpy arrays and (for the contour
    table) torch tensors. It is unpickled with the FLAME loader's allow-list plus torch's tensor
    rebuild, whose storages load with ``weights_only=True``; never with ``allow_pickle=True``.

    Raises:
        CapHumanError: unreadable file, a disallowed class, or missing/mis-shaped entries.
    """
    import pickle

    from caphuman.head.deca.files import RestrictedFlameUnpickler

    class Unpickler(RestrictedFlameUnpickler):
        def find_class(self, module: str, name: str):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                from torch._utils import _rebuild_tensor_v2

                return _rebuild_tensor_v2
            if (module, name) == ("torch.storage", "_load_from_bytes"):
                return _torch_storage_from_bytes
            if (module, name) == ("collections", "OrderedDict"):
                from collections import OrderedDict

                return OrderedDict
            return super().find_class(module, name)

    try:
        with open(path, "rb") as stream:
            major, _ = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(stream)
            if dtype != np.dtype(object):
                raise CapHumanError(f"'{path}' holds a {dtype} array, not DECA's landmark embedding (a pickled dict).")
            loaded = Unpickler(stream, encoding="latin1").load()
    except CapHumanError:
        raise
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError, TypeError, AttributeError) as error:
        raise CapHumanError(f"'{path}' could not be read as DECA's landmark embedding ({error}).") from None
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
        loaded = loaded.item()
    keys = ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords")
    if not isinstance(loaded, dict) or any(key not in loaded for key in keys):
        raise CapHumanError(f"'{path}' lacks {', '.join(keys)}; it is not DECA's landmark_embedding.npy.")
    faces = [torch.as_tensor(np.asarray(loaded[key])).long() for key in keys[::2]]
    weights = [torch.as_tensor(np.asarray(loaded[key]), dtype=torch.float32) for key in keys[1::2]]
    landmarks = FlameLandmarks(faces[0].reshape(-1), weights[0].reshape(-1, 3), faces[1], weights[1])
    rows = 2 * MAX_CONTOUR_DEGREES + 1
    static = NUM_FACE_LANDMARKS - NUM_CONTOUR_LANDMARKS
    if (
        landmarks.static_faces.shape != (static,) or landmarks.static_weights.shape != (static, 3)
        or landmarks.contour_faces.shape != (rows, NUM_CONTOUR_LANDMARKS)
        or landmarks.contour_weights.shape != (rows, NUM_CONTOUR_LANDMARKS, 3)
    ):
        raise CapHumanError(f"'{path}' has landmark tables of unexpected shapes; it is not DECA's landmark_embedding.npy.")
    return landmarks


def contour_row(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) head rotation -> (B,) row of DECA's contour table (FLAME's _find_dynamic_lmk_idx):
    the rotation's angle about y, atan2(-R[2, 0], hypot(R[0, 0], R[1, 0])), in whole degrees
    capped at 39; 0..39 as they are, negative angles to 39 - angle, below -39 to 78. DECA's neck
    joint is never rotated, so the head's rotation is the root's."""
    angle = torch.atan2(-rotation[:, 2, 0], torch.sqrt(rotation[:, 0, 0] ** 2 + rotation[:, 1, 0] ** 2))
    degrees = torch.round(torch.clamp(angle * 180.0 / math.pi, max=MAX_CONTOUR_DEGREES)).long()
    negative = torch.where(degrees < -MAX_CONTOUR_DEGREES, torch.full_like(degrees, 2 * MAX_CONTOUR_DEGREES), MAX_CONTOUR_DEGREES - degrees)
    return torch.where(degrees < 0, negative, degrees)


def flame_landmarks68(vertices: torch.Tensor, faces: torch.Tensor, landmarks: FlameLandmarks, rotation: torch.Tensor) -> torch.Tensor:
    """(B, 68, 3) DECA ``landmarks2d`` points on posed FLAME ``vertices`` (B, V, 3): the jaw-line
    contour for each head's ``rotation`` (B, 3, 3), then the 51 fixed points."""
    rows = contour_row(rotation)
    landmark_faces = torch.cat([landmarks.contour_faces[rows], landmarks.static_faces.expand(len(rows), -1)], dim=1)
    weights = torch.cat([landmarks.contour_weights[rows], landmarks.static_weights.expand(len(rows), -1, -1)], dim=1)
    corners = torch.stack([vertices[b, faces[landmark_faces[b]]] for b in range(len(rows))])  # (B, 68, 3, 3)
    return (corners * weights[..., None]).sum(dim=2)


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
    "FLAME_LANDMARK_FILE",
    "MEDIAPIPE_68",
    "NUM_FACE_LANDMARKS",
    "face_points",
    "FlameLandmarks",
    "contour_row",
    "flame_landmarks68",
    "load_flame_landmarks",
    "project",
    "to_image_fraction",
]
