"""The HeadPrior interface every backend (built-in, DECA/FLAME) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from caphuman.head.params import HeadParams


@dataclass
class HeadMesh:
    """A posed head ready for the renderer.

    Attributes:
        vertices: (B, V, 3) in normalised camera coordinates: x right and y up in [-1, 1] across
            the image, z towards the viewer (orthographic projection drops z).
        faces: (F, 3) long vertex indices, counter-clockwise seen from the front.
        albedo: (B, V, 3) per-vertex albedo in [0, 1].
        lighting: (B, 9, 3) spherical-harmonics coefficients.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    albedo: torch.Tensor
    lighting: torch.Tensor


class HeadPrior(ABC):
    """Reconstructs heads from photos and turns head parameters into a mesh.

    ``name`` identifies the backend (stored in :class:`HeadParams.backend`); ``trained_with``
    lists the CapFace weights whose training hints came from this prior (the released
    caphuman.ckpt was trained on DECA/FLAME renders).
    """

    name: str

    @abstractmethod
    def reconstruct(self, image: np.ndarray, face_index: int = 0) -> HeadParams:
        """Reconstruct the head of one face in an RGB uint8 (H, W, 3) photo (B = 1).

        Raises caphuman.errors.InputImageError when no face is found.
        """

    @abstractmethod
    def mesh(self, params: HeadParams) -> HeadMesh:
        """Posed mesh, albedo and lighting for ``params`` (batched)."""
