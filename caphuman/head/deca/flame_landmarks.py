"""DECA's 68 face landmarks on FLAME (``landmarks2d``), read from its landmark embedding.

DECA's ``landmark_embedding.npy`` (DECA's data/ folder) gives each landmark as a triangle of
FLAME's surface and barycentric weights, read with :func:`load_flame_landmarks`: the 17 jaw-line
points come from a yaw-dependent table (the visible contour of a turned head,
:func:`contour_row`), the other 51 are fixed. :func:`flame_landmarks68` places them on a posed
mesh; :func:`caphuman.head.landmarks.project` poses them like the hint.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from caphuman.errors import CapHumanError
from caphuman.head.deca.files import RestrictedFlameUnpickler
from caphuman.head.landmarks import NUM_FACE_LANDMARKS

NUM_CONTOUR_LANDMARKS = 17
# DECA's contour table has a row per whole degree of yaw: 0..39 for one side, 40..78 for the other.
MAX_CONTOUR_DEGREES = 39


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

    def to(self, device) -> FlameLandmarks:
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
        landmarks.static_faces.shape != (static,)
        or landmarks.static_weights.shape != (static, 3)
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


__all__ = [
    "FlameLandmarks",
    "contour_row",
    "flame_landmarks68",
    "load_flame_landmarks",
]
