"""The HeadPrior interface every backend (built-in, DECA/FLAME) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from caphuman.head.params import HeadParams


@dataclass
class UVTexture:
    """Albedo as a UV map, looked up per pixel (DECA's renderer does this with ``grid_sample``).

    Attributes:
        image: (B, 3, Ht, Wt) albedo map; row 0 is the top of the map (v = 1).
        uvs: (T, 2) texture coordinates, u right and v up in [0, 1] (Wavefront .obj convention).
        uv_faces: (F, 3) long indices into ``uvs`` for each corner of each triangle of the mesh
            (parallel to ``HeadMesh.faces``: a vertex on a UV seam has several texture coordinates).
    """

    image: torch.Tensor
    uvs: torch.Tensor
    uv_faces: torch.Tensor


@dataclass
class HeadMesh:
    """A posed head ready for the renderer.

    Attributes:
        vertices: (B, V, 3) in normalised camera coordinates: x right and y up in [-1, 1] across
            the image, z towards the viewer (orthographic projection drops z).
        faces: (F, 3) long vertex indices, counter-clockwise seen from the front.
        albedo: (B, V, 3) per-vertex albedo in [0, 1], or None when ``texture`` gives the albedo.
        lighting: (B, 9, 3) spherical-harmonics coefficients.
        texture: a UV albedo map looked up per pixel, instead of per-vertex ``albedo``.
        renormalize_normals: True: per-pixel normals are rescaled to unit length after
            interpolation. False (DECA's renderer): they are the interpolated unit vertex normals
            as they are (a little shorter inside curved triangles), in the normal channels and in
            the shading alike.
        clamp_colours: True: the albedo and shaded images are clipped to [0, 1]. False (DECA's
            renderer): albedo and albedo x shading are used as computed.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    albedo: torch.Tensor | None
    lighting: torch.Tensor
    texture: UVTexture | None = None
    renormalize_normals: bool = True
    clamp_colours: bool = True


class HeadPrior(ABC):
    """Reconstructs heads from photos and turns head parameters into a mesh.

    ``name`` identifies the backend (stored in :class:`HeadParams.backend`); ``trained_with``
    lists the CapFace weights whose training hints came from this prior (the released
    caphuman.ckpt was trained on DECA/FLAME renders).
    """

    name: str

    @abstractmethod
    def reconstruct(self, image: np.ndarray, face_index: int = 0, source: str = "the input photo") -> HeadParams:
        """Reconstruct the head of one face in an RGB uint8 (H, W, 3) photo (B = 1).

        ``source`` names the photo in error messages (its path, so an error about the pose photo
        says which file). Raises caphuman.errors.InputImageError when no face is found.
        """

    @abstractmethod
    def mesh(self, params: HeadParams) -> HeadMesh:
        """Posed mesh, albedo and lighting for ``params`` (batched)."""
