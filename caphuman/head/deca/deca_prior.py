"""The DECA / FLAME head prior: the backend the released CapHuman weights were trained with.

DECA (Feng et al., SIGGRAPH 2021) regresses FLAME parameters from a face crop
(:mod:`caphuman.head.deca.encoder`, :mod:`caphuman.head.deca.crop`); this module turns its
outputs into :class:`~caphuman.head.params.HeadParams` conventions and poses FLAME
(:mod:`caphuman.head.deca.flame`) with them.

Frames: FLAME's model frame is already the project's camera frame (x right in the image for a
frontal head, y up, z towards the viewer), so DECA's crop camera converts by a scale and shift
(:func:`caphuman.head.deca.crop.camera_from_deca`). The global rotation rotates the head about
FLAME's root joint; :meth:`DecaHeadPrior.mesh` poses FLAME the same way, so a reconstructed head
lands where DECA would render it.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from skimage.transform import resize

from caphuman.errors import CapHumanError, InputImageError
from caphuman.faces.detection import FaceDetector, select_face
from caphuman.head.deca.crop import WORKING_SIZE, CropWindow, camera_from_deca, crop_face, crop_window_from_face
from caphuman.head.deca.encoder import DecaCode, load_deca_encoder
from caphuman.head.deca.files import DecaAssetPaths, FlameTexture, load_flame_model, load_flame_texture
from caphuman.head.deca.flame import FlameLayer
from caphuman.head.deca.flame_landmarks import flame_landmarks68, load_flame_landmarks
from caphuman.head.params import HeadParams
from caphuman.head.prior import HeadMesh, HeadPrior, UVTexture
from caphuman.head.rotations import axis_angle_to_matrix, matrix_to_yaw_pitch_roll, yaw_pitch_roll_to_matrix
from caphuman.weights.registry import weights_entry

logger = logging.getLogger(__name__)

NUM_SHAPE, NUM_TEXTURE, NUM_EXPRESSION = 100, 50, 50
# DECA renders albedo from a 256 x 256 UV map (cfg.model.uv_size; FLAMETex resizes to it).
UV_SIZE = 256


# ---------------------------------------------------------------------------------------------
# Conversions


def rotation_from_deca(global_axis_angle: torch.Tensor) -> torch.Tensor:
    """DECA's global pose (B, 3) axis-angle -> (B, 3) yaw, pitch, roll degrees.

    FLAME's frame is our camera frame, so the rotation matrix is used as is; e.g. a positive
    rotation about +y carries the nose (+z) towards +x, the image's right: positive yaw.
    """
    return matrix_to_yaw_pitch_roll(axis_angle_to_matrix(global_axis_angle))


# ---------------------------------------------------------------------------------------------
# UV albedo map


def uv_albedo_space(texture: FlameTexture, size: int = UV_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The FLAME texture space at the resolution DECA renders with: (3, size, size) mean, (K, 3, size, size) basis.

    DECA's FLAMETex builds the albedo map at the file's resolution (mean + basis . code) and then
    shrinks it with ``F.interpolate(texture, [256, 256])``, i.e. nearest neighbour (512 -> 256 keeps
    every second texel). Picking texels commutes with the linear combination, so the mean and
    each basis map are picked once here and the per-head map is combined at 256 px (a quarter of
    the memory and work); the values are the same.
    """
    mean = torch.from_numpy(np.ascontiguousarray(texture.mean.transpose(2, 0, 1)))[None]  # (1, 3, H, W)
    basis = torch.from_numpy(texture.basis).permute(3, 2, 0, 1)  # (K, 3, H, W)
    mean = torch.nn.functional.interpolate(mean, size=(size, size), mode="nearest")[0]
    basis = torch.nn.functional.interpolate(basis, size=(size, size), mode="nearest")
    return mean.contiguous(), basis.contiguous()


# ---------------------------------------------------------------------------------------------
# The head prior


class DecaHeadPrior(HeadPrior):
    """DECA reconstruction + FLAME meshes, in the project's :class:`HeadParams` conventions.

    HeadParams made here: shape (1, 100), expression (1, 50), jaw (1, 3) axis-angle, rotation
    (1, 3) degrees, camera (1, 3), albedo (1, 50) FLAME texture coefficients, lighting (1, 9, 3)
    DECA's SH coefficients (DECA's basis order and constants, see
    caphuman/head/spherical_harmonics.py). Meshes are rendered with DECA's SRenderY formulas:
    the albedo map (FLAME texture space at 256 px, see :func:`uv_albedo_space`) is looked up per
    pixel at the interpolated texture coordinate; normals are the interpolated unit vertex
    normals, not renormalised, and feed the SH shading as they are; nothing is clamped.
    """

    name = "deca"
    trained_with = ("caphuman.ckpt",)

    def __init__(
        self,
        weights_dir: str | os.PathLike,
        device: torch.device | str = "cpu",
        detector: FaceDetector | None = None,
        working_size: int = WORKING_SIZE,
    ):
        """Load DECA and FLAME from ``weights_dir`` (see caphuman/head/deca/files.py for the files).

        Args:
            weights_dir: folder with deca/ (or the files themselves).
            device: torch device for the encoder and FLAME.
            detector: object with ``detect(image) -> list[DetectedFace]``; default: a mediapipe
                :class:`caphuman.faces.detection.FaceDetector`, created on first use.
            working_size: side of the square the photo is resized to before detection and
                cropping (CapHuman: 512).
        Raises:
            MissingWeightsError: a DECA/FLAME file is missing.
        """
        paths = DecaAssetPaths.locate(weights_dir)
        self.device = torch.device(device)
        self.working_size = int(working_size)
        self._detector = detector
        self.encoder = load_deca_encoder(paths.deca_model, self.device)
        self.flame = FlameLayer(load_flame_model(paths.flame_model), NUM_SHAPE, NUM_EXPRESSION).to(self.device)
        texture = load_flame_texture(paths.flame_texture, NUM_TEXTURE, paths.head_template)
        faces = self.flame.faces.cpu()
        if texture.uv_faces.shape != tuple(faces.shape):
            raise CapHumanError(f"FLAME texture coordinates cover {texture.uv_faces.shape[0]} triangles but FLAME has {faces.shape[0]}.")
        if texture.uv_faces.size and int(texture.uv_faces.max()) >= texture.uvs.shape[0]:
            raise CapHumanError(
                f"FLAME texture triangles index {int(texture.uv_faces.max()) + 1} texture coordinates, the file has {texture.uvs.shape[0]}."
            )
        mean, basis = uv_albedo_space(texture)
        self.albedo_map_mean = mean.to(self.device)  # (3, 256, 256)
        self.albedo_map_basis = basis.to(self.device)  # (K, 3, 256, 256)
        self.uvs = torch.from_numpy(texture.uvs).to(self.device)
        self.uv_faces = torch.from_numpy(texture.uv_faces).to(self.device)
        del texture  # drop the full-resolution basis (about 160 MB at 512 px) now
        # DECA's landmark_embedding.npy is optional: only the OpenPose map's face dots need it.
        self.landmark_embedding = load_flame_landmarks(paths.landmark_embedding).to(self.device) if paths.landmark_embedding is not None else None
        logger.info("DECA head prior loaded from %s (FLAME: %d vertices).", paths.deca_model.parent, self.flame.num_vertices)

    def landmarks68(self, params: HeadParams) -> torch.Tensor:
        """(B, 68, 2) DECA's ``landmarks2d`` in normalised camera coordinates (x right, y up): on the
        posed mesh of :meth:`mesh`, which already carries the orthographic camera (a barycentric
        point of the camera-mapped mesh is the camera-mapped point)."""
        if self.landmark_embedding is None:
            raise NotImplementedError(
                f"The 'deca' head prior needs {weights_entry('flame_landmarks').path} (DECA's data/ folder) for the 68 face landmarks."
            )
        vertices = self.mesh(params).vertices  # (B, V, 3)
        rotation = yaw_pitch_roll_to_matrix(params.rotation.to(vertices.device, torch.float32))
        return flame_landmarks68(vertices, self.flame.faces, self.landmark_embedding, rotation)[..., :2]

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector

    def working_image(self, image: np.ndarray) -> np.ndarray:
        """The photo as CapHuman's DECA saw it: (S, S, 3) uint8, resized with anti-aliasing."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputImageError(f"Expected an RGB uint8 (H, W, 3) photo, got {getattr(image, 'shape', type(image))}.")
        if image.shape[:2] == (self.working_size, self.working_size):
            return image
        resized = resize(image, (self.working_size, self.working_size), anti_aliasing=True)
        return (resized * 255.0).astype(np.uint8)

    @torch.no_grad()
    def encode(self, crops: torch.Tensor) -> DecaCode:
        """(B, 3, 224, 224) RGB crops in [0, 1] -> :class:`DecaCode`."""
        return DecaCode.from_vector(self.encoder(crops.to(self.device, torch.float32)))

    def reconstruct(self, image: np.ndarray, face_index: int = 0, source: str = "the input photo") -> HeadParams:
        """DECA reconstruction of one face (B = 1); tensors on this prior's device.

        Raises:
            InputImageError: bad image array, no face, or ``face_index`` out of range.
        """
        working = self.working_image(image)
        # The caller announced the face choice when it picked the face (logged once per photo).
        face = select_face(self.detector.detect(working), face_index, source, announce=False)
        window = crop_window_from_face(face.box, face.landmarks, self.working_size)
        crop = crop_face(working.astype(np.float32) / 255.0, window)
        code = self.encode(torch.from_numpy(crop).permute(2, 0, 1)[None])
        return self.params_from_code(code, window)

    def params_from_code(self, code: DecaCode, window: CropWindow) -> HeadParams:
        """Convert DECA's outputs for a crop window into :class:`HeadParams`."""
        return HeadParams(
            shape=code.shape.clone(),
            expression=code.exp.clone(),
            jaw=code.pose[:, 3:].clone(),
            rotation=rotation_from_deca(code.pose[:, :3]),
            camera=camera_from_deca(code.cam, window),
            albedo=code.tex.clone(),
            lighting=code.light.clone(),
            backend=self.name,
        )

    def mesh(self, params: HeadParams) -> HeadMesh:
        """FLAME posed by ``params`` in normalised camera coordinates, with its UV albedo map and
        DECA's shading rules (no renormalised normals, no clamping).

        vertices = scale * FLAME(shape, expression, rotation about the root joint, jaw) + (tx, ty, 0);
        z keeps the same scale, so normals and depth order match the image plane.
        """
        if params.backend != self.name:
            raise CapHumanError(f"Head parameters from the '{params.backend}' prior cannot be meshed by the '{self.name}' prior.")
        p = params.to(self.device)
        expected = {"shape": NUM_SHAPE, "expression": NUM_EXPRESSION, "albedo": NUM_TEXTURE}
        for field_name, size in expected.items():
            value = getattr(p, field_name)
            if value.ndim != 2 or value.shape[1] != size:
                raise CapHumanError(f"DECA head parameters need {field_name} of shape (B, {size}), got {tuple(value.shape)}.")
        dtype = torch.float32
        rotations = self.flame.joint_rotations(yaw_pitch_roll_to_matrix(p.rotation.to(dtype)), p.jaw.to(dtype))
        vertices = self.flame(p.shape.to(dtype), p.expression.to(dtype), rotations)
        scale, tx, ty = p.camera.to(dtype).unbind(-1)
        offset = torch.stack([tx, ty, torch.zeros_like(tx)], dim=-1)
        vertices = scale[:, None, None] * vertices + offset[:, None, :]
        # DECA's FLAMETex: mean + basis . code, never clamped (the published hints keep any
        # excursion outside [0, 1]).
        albedo_map = self.albedo_map_mean + torch.einsum("kchw,bk->bchw", self.albedo_map_basis, p.albedo.to(dtype))
        return HeadMesh(
            vertices=vertices,
            faces=self.flame.faces,
            albedo=None,
            lighting=p.lighting.to(dtype),
            texture=UVTexture(image=albedo_map, uvs=self.uvs, uv_faces=self.uv_faces),
            renormalize_normals=False,
            clamp_colours=False,
        )


__all__ = [
    "DecaHeadPrior",
    "rotation_from_deca",
    "uv_albedo_space",
]
